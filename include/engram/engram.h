/* engram.h - everything public in libengram. */
#ifndef ENGRAM_ENGRAM_H
#define ENGRAM_ENGRAM_H
#include "eg_base.h"
#include "eg_config.h"
#include "eg_count.h"
#include "eg_dtype.h"
#include "eg_contract.h"
#include "eg_hash.h"
#include "eg_prep.h"
#include "eg_projection.h"
#include "eg_safetensors.h"
#include "eg_shard.h"
#include "eg_spec.h"
#include "eg_store.h"
#include "eg_tokenizer.h"
#endif
