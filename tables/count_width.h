/* count_width.h - the width template of exact counting: what differs between
 * one-word keys (KW 1: order << 60 | ids, N x bits <= 60; 16-byte entries, or
 * 12 with CNT32's 32-bit counts) and two-word keys (KW 2: order << 124 | ids;
 * 24-byte entries). Every stage file is written against these names and
 * compiled once per width by count_impl.h. */
#ifndef KW
#error "define KW (1 or 2) before including the counting stages (see count_impl.h)"
#endif

/* A counted n-gram: key = order << ORDER_SHIFT | ids packed oldest first.
 * A zero top word marks an empty slot (the order, >= 2, lives in its top
 * bits). With KW 1 the key is `lo` alone and hi reads as 0. */
#if KW == 1 && defined(CNT32)
typedef struct __attribute__((packed)) {
    uint64_t lo;
    uint32_t count; /* the input has fewer than 2^32 tokens */
} entry;
#elif KW == 1
typedef struct {
    uint64_t lo, count;
} entry;
#endif
#if KW == 1
#define ORDER_SHIFT 60
#define E_HI(e) ((uint64_t)0)
#define E_SET_HI(e, v) ((void)(v))
#define E_USED(e) ((e).lo != 0)
#define KHI(a, i) ((uint64_t)0)
#else
typedef struct {
    uint64_t hi, lo, count;
} entry;
#define ORDER_SHIFT 124
#define E_HI(e) ((e).hi)
#define E_SET_HI(e, v) ((e).hi = (v))
#define E_USED(e) ((e).hi != 0)
#define KHI(a, i) ((a)[i])
#endif

static inline u128 key_of(const entry *e) { return (u128)E_HI(*e) << 64 | e->lo; }

/* A key as one comparable number (for the range partitions' splitters). */
#if KW == 1
typedef uint64_t kkey;
#define KEY_AT(hi, lo, i) ((lo)[i])
#else
typedef u128 kkey;
#define KEY_AT(hi, lo, i) ((u128)(hi)[i] << 64 | (lo)[i])
#endif

/* A narrow key: what a key less its range's lowest takes where the range is
 * narrow enough (one-word keys in 4 bytes, two-word keys in 8; see
 * count_scatter.h). */
#if KW == 1
typedef uint32_t nkey;
#else
typedef uint64_t nkey;
#endif
