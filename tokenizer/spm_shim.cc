// spm_shim.cc - the one C++ file: libsentencepiece behind a small C API.
// No exception crosses into C: every entry point catches.
#include <sentencepiece_processor.h>

#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "spm.h"

struct eg_spm {
    sentencepiece::SentencePieceProcessor proc;
};

extern "C" eg_spm *eg_spm_load(const char *data, size_t len, char *msg, size_t cap)
{
    try {
        std::unique_ptr<eg_spm> m(new eg_spm()); // freed when the load throws too
        auto st = m->proc.LoadFromSerializedProto(std::string(data, len));
        if (!st.ok()) {
            if (msg && cap)
                snprintf(msg, cap, "%s", st.ToString().c_str());
            return nullptr;
        }
        return m.release();
    } catch (const std::exception &e) {
        if (msg && cap)
            snprintf(msg, cap, "%s", e.what());
        return nullptr;
    } catch (...) {
        if (msg && cap)
            snprintf(msg, cap, "unknown error in libsentencepiece");
        return nullptr;
    }
}

extern "C" void eg_spm_free(eg_spm *m) { delete m; }

extern "C" int eg_spm_size(const eg_spm *m) { return m->proc.GetPieceSize(); }

extern "C" const char *eg_spm_piece(const eg_spm *m, int id, size_t *len)
{
    const std::string &s = m->proc.IdToPiece(id);
    *len = s.size();
    return s.data();
}

extern "C" int eg_spm_is_control(const eg_spm *m, int id) { return m->proc.IsControl(id); }
extern "C" int eg_spm_is_unknown(const eg_spm *m, int id) { return m->proc.IsUnknown(id); }
extern "C" int eg_spm_is_byte(const eg_spm *m, int id) { return m->proc.IsByte(id); }
extern "C" int eg_spm_is_unused(const eg_spm *m, int id) { return m->proc.IsUnused(id); }

extern "C" size_t eg_spm_decode_native(const eg_spm *m, int id, char *buf, size_t cap)
{
    try {
        std::string s = m->proc.DecodeIds(std::vector<int>{id});
        if (cap)
            memcpy(buf, s.data(), s.size() < cap ? s.size() : cap);
        return s.size();
    } catch (...) {
        return 0;
    }
}

extern "C" long eg_spm_encode(const eg_spm *m, const char *text, size_t len, int32_t *ids,
                              size_t cap)
{
    try {
        thread_local std::vector<int> v; /* reused: no allocation per call */
        v.clear();
        auto st = m->proc.Encode(absl::string_view(text, len), &v);
        if (!st.ok())
            return -1;
        for (size_t i = 0; i < v.size() && i < cap; i++)
            ids[i] = v[i];
        return (long)v.size();
    } catch (...) {
        return -1;
    }
}
