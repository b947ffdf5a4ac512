/* sentencepiece_model: reads a SentencePiece `.model` file (a ModelProto protobuf) into plain
 * C structs: the pieces (string, score, type), the trainer settings that matter when encoding
 * (model type, byte fallback, special pieces) and the normaliser settings. It checks the wire
 * format strictly, so a truncated, corrupt or foreign file is an error naming the file and the
 * byte offset, never a crash. Whether the model is one gale can encode with is decided by the
 * tokenizer (data/tokenizer.c), not here. */
#ifndef GALE_DATA_SENTENCEPIECE_MODEL_H
#define GALE_DATA_SENTENCEPIECE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

/* ModelProto.SentencePiece.Type */
enum spm_piece_type {
    SPM_PIECE_NORMAL = 1,
    SPM_PIECE_UNKNOWN = 2,
    SPM_PIECE_CONTROL = 3,
    SPM_PIECE_USER_DEFINED = 4,
    SPM_PIECE_UNUSED = 5,
    SPM_PIECE_BYTE = 6,
};

/* TrainerSpec.ModelType */
enum spm_model_type {
    SPM_MODEL_UNIGRAM = 1,
    SPM_MODEL_BPE = 2,
    SPM_MODEL_WORD = 3,
    SPM_MODEL_CHAR = 4,
};

typedef struct spm_piece {
    char *piece; /* NUL-terminated copy; len excludes the NUL (a piece may hold a NUL byte) */
    size_t len;
    float score;
    int type; /* enum spm_piece_type */
} spm_piece;

typedef struct spm_normalizer_spec {
    char *name;            /* "" when absent */
    size_t charsmap_len;   /* length of precompiled_charsmap; 0 means identity */
    int add_dummy_prefix;  /* defaults as in sentencepiece_model.proto: true */
    int remove_extra_whitespaces; /* true */
    int escape_whitespaces;       /* true */
    int has_rule_tsv;      /* normalization_rule_tsv present and non-empty */
} spm_normalizer_spec;

typedef struct spm_model {
    spm_piece *pieces;
    size_t n_pieces;
    char *piece_bytes; /* one block holding every piece's string (the file's size at most) */
    size_t piece_bytes_used;
    int model_type; /* enum spm_model_type; UNIGRAM when absent, as in the proto */
    int byte_fallback;
    int treat_whitespace_as_suffix;
    char *unk_piece, *bos_piece, *eos_piece, *pad_piece; /* defaults <unk> <s> </s> <pad> */
    char *unk_surface; /* default " \xE2\x81\x87 " */
    int has_trainer_spec, has_normalizer_spec;
    spm_normalizer_spec normalizer;
    int has_denormalizer;
    spm_normalizer_spec denormalizer;
} spm_model;

/* Parses the bytes of a .model file into model (zeroed first). On error returns -1 with a
 * message naming `name` and the offset; model is left empty. */
int spm_model_parse(const void *data, size_t len, const char *name, spm_model *model, gale_error *err);
void spm_model_free(spm_model *model);

/* The name of a piece type or model type, for messages ("unigram", "CONTROL", ...). */
const char *spm_model_type_name(int model_type);
const char *spm_piece_type_name(int type);

#endif
