/* Hugging Face GPT-2 checkpoint directories: config.json (GPT2Config keys) and
 * model.safetensors (Conv1D layout, "transformer."-prefixed or bare names). */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/tokenizer.h"
#include "data/jsonl.h"

/* A required positive integer key. */
static int config_size(const char *path, const cJSON *root, const char *key, const char *alt, size_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j && alt) j = cJSON_GetObjectItemCaseSensitive(root, alt);
    if (!j) return alt ? fdpo_error("%s: missing key '%s' (or '%s')", path, key, alt)
                       : fdpo_error("%s: missing key '%s'", path, key);
    double v = cJSON_IsNumber(j) ? j->valuedouble : -1;
    if (!(v >= 1) || v != floor(v) || v > 1e9)
        return fdpo_error("%s: key '%s' must be a positive integer", path, j->string);
    *out = (size_t)v;
    return 0;
}

/* The first of keys (NULL-ended) that text[0..len) (a config.json, root its parse) writes at
 * its top level as a number with a fraction or an exponent (2.0, 2e0): Python's json reads
 * such a literal as a float, which transformers cannot build a layer from (torch.nn sizes and
 * range() take ints), while cJSON keeps only the double, so the text is looked at. Refused
 * naming the file, the line and the key; 0 when none. */
static int config_integer_literals(const char *path, const char *text, size_t len, const cJSON *root,
                                   const char *const *keys) {
    size_t count = 0, *at = fdpo_json_member_offsets(text, len, &count), k = 0;
    int rc = 0;
    for (const cJSON *e = root->child; e && k < count && !rc; e = e->next, k++) {
        int wanted = 0;
        for (size_t i = 0; keys[i] && !wanted; i++) wanted = e->string && !strcmp(e->string, keys[i]);
        /* n_ctx is read only without n_positions; num_labels only where no id2label decides */
        if (!strcmp(e->string, "n_ctx") && cJSON_GetObjectItemCaseSensitive(root, "n_positions")) wanted = 0;
        if (!strcmp(e->string, "num_labels") && cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "id2label"))) wanted = 0;
        if (!wanted || !cJSON_IsNumber(e)) continue;
        size_t i = at[k] + 1;   /* past the key's string, the ':' and JSON's whitespace */
        for (; i < len && text[i] != '"'; i++) if (text[i] == '\\') i++;
        for (i++; i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n' || text[i] == ':'); i++) {}
        size_t n = 0, num = fdpo_json_next_number(text, len, i, &n);
        if (num != i) continue;   /* not a number literal here: cannot happen for a parsed number */
        if (memchr(text + num, '.', n) || memchr(text + num, 'e', n) || memchr(text + num, 'E', n)) {
            size_t col, line = fdpo_json_line_col(text, num, 1, &col);
            rc = fdpo_error("%s:%zu: key '%s' must be written as an integer, not %.*s (Python's json reads it as a "
                            "float, and transformers builds layers from int sizes only)", path, line, e->string,
                            (int)(n > 40 ? 40 : n), text + num);
        }
    }
    free(at);
    return rc;
}

/* A GPT-2 size that GPT2Config also reads under transformers' name (its attribute_map:
 * num_attention_heads -> n_head, num_hidden_layers -> n_layer, hidden_size -> n_embd,
 * max_position_embeddings -> n_positions). transformers sets the alias last, so it is the
 * value; other readers take the GPT-2 key. Either alone is read; both, they must agree. */
static int config_size_aliased(const char *path, const cJSON *root, const char *key, const char *alt, const char *alias,
                               size_t *out) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, alias);
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!k && alt) k = cJSON_GetObjectItemCaseSensitive(root, alt);
    if (!a) return config_size(path, root, key, alt, out);
    if (!k) return config_size(path, root, alias, NULL, out);
    size_t by_key = 0, by_alias = 0;
    if (config_size(path, root, key, alt, &by_key) || config_size(path, root, alias, NULL, &by_alias)) return -1;
    if (by_key != by_alias)
        return fdpo_error("%s: %s %zu and %s %zu disagree (transformers' GPT2Config reads %s as %s and builds %zu; "
                          "other readers take %s %zu): give one, or both alike", path, k->string, by_key, alias, by_alias,
                          alias, key, by_alias, k->string, by_key);
    *out = by_key;
    return 0;
}

static int config_bool(const char *path, const cJSON *root, const char *key, int def, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) { *out = def; return 0; }
    if (!cJSON_IsBool(j)) return fdpo_error("%s: key '%s' must be true or false", path, key);
    *out = cJSON_IsTrue(j);
    return 0;
}

static int config_number(const char *path, const cJSON *root, const char *key, double def, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) { *out = def; return 0; }
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || !isfinite(j->valuedouble))
        return fdpo_error("%s: key '%s' must be a positive number", path, key);
    *out = j->valuedouble;
    return 0;
}

/* LlamaConfig / Qwen2Config keys (defaults as in transformers) */
static int config_load_llama(const char *path, const cJSON *root, const char *model_type, fdpo_gpt2_config *c) {
    int rc = 0, qwen2 = !strcmp(model_type, "qwen2");
    c->arch = FDPO_ARCH_LLAMA;
    snprintf(c->model_type, sizeof c->model_type, "%s", model_type);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return fdpo_error("%s: hidden_act '%.64s' is not supported (only silu)", path, cJSON_IsString(act) ? act->valuestring : "(not a string)");
    if (!rc) rc = config_size(path, root, "vocab_size", NULL, &c->vocab_size);
    if (!rc) rc = config_size(path, root, "hidden_size", NULL, &c->n_embd);
    if (!rc) rc = config_size(path, root, "intermediate_size", NULL, &c->intermediate_size);
    if (!rc) rc = config_size(path, root, "num_hidden_layers", NULL, &c->n_layer);
    if (!rc) rc = config_size(path, root, "num_attention_heads", NULL, &c->n_head);
    if (!rc) rc = config_size(path, root, "max_position_embeddings", NULL, &c->n_positions);
    /* an absent num_key_value_heads takes the class's default: LlamaConfig's None, which (as an
     * explicit null for both) means num_attention_heads, but Qwen2Config's 32 */
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(root, "num_key_value_heads");
    c->n_kv_head = qwen2 && !kv ? 32 : c->n_head;
    if (!rc && kv && !cJSON_IsNull(kv)) rc = config_size(path, root, "num_key_value_heads", NULL, &c->n_kv_head);
    if (!rc && qwen2 && !kv && c->n_head % 32)
        rc = fdpo_error("%s: num_key_value_heads is absent, and Qwen2Config's default for it, 32, does not divide "
                        "num_attention_heads %zu (set it)", path, c->n_head);
    if (!rc && cJSON_GetObjectItemCaseSensitive(root, "head_dim") && !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "head_dim")))
        rc = config_size(path, root, "head_dim", NULL, &c->head_dim);
    double eps = 0, theta = 0;
    if (!rc) rc = config_number(path, root, "rms_norm_eps", 1e-6, &eps);
    if (!rc) rc = config_number(path, root, "rope_theta", 10000.0, &theta);
    c->layer_norm_epsilon = (float)eps;
    c->rope_theta = theta;
    int attention_bias = 0, sliding = 0;
    if (!rc) rc = config_bool(path, root, "tie_word_embeddings", 0, &c->tie_word_embeddings);
    if (!rc) rc = config_bool(path, root, "attention_bias", 0, &attention_bias);
    /* Qwen2Config has no mlp_bias: transformers' Qwen2MLP builds its three projections without
     * biases whatever the key says (it is kept as a plain attribute), so it is not read */
    if (!rc && !qwen2) rc = config_bool(path, root, "mlp_bias", 0, &c->mlp_bias);
    if (!rc) rc = config_bool(path, root, "use_sliding_window", 0, &sliding);
    if (!rc && sliding) rc = fdpo_error("%s: use_sliding_window true is not supported", path);
    /* transformers' rotary init rotates head_dim x partial_rotary_factor dimensions (at top
     * level, or in v5's rope_parameters); fdpo rotates them all, so another factor was read as 1 */
    const char *const prf_in[] = {NULL, "rope_parameters", "rope_scaling"};
    for (size_t i = 0; !rc && i < sizeof prf_in / sizeof prf_in[0]; i++) {
        const cJSON *obj = prf_in[i] ? cJSON_GetObjectItemCaseSensitive(root, prf_in[i]) : root;
        const cJSON *prf = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, "partial_rotary_factor") : NULL;
        if (prf && !cJSON_IsNull(prf) && !cJSON_IsNumber(prf))
            rc = fdpo_error("%s: %s%spartial_rotary_factor must be a number", path, prf_in[i] ? prf_in[i] : "",
                            prf_in[i] ? "." : "");
        else if (prf && cJSON_IsNumber(prf) && prf->valuedouble != 1.0)
            rc = fdpo_error("%s: %s%spartial_rotary_factor %.17g is not supported (fdpo rotates every dimension of a "
                            "head: 1)", path, prf_in[i] ? prf_in[i] : "", prf_in[i] ? "." : "", prf->valuedouble);
    }
    c->qkv_bias = qwen2 || attention_bias;
    c->o_bias = !qwen2 && attention_bias;
    /* transformers v5 writes the rotary settings as one "rope_parameters" object (rope_type,
     * rope_theta, the scaling's own keys) instead of rope_theta + rope_scaling: read either,
     * never fall back to theta 10000 past a base it did not read */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rs0 = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    /* transformers v5: rope_scaling, when given, replaces rope_parameters whole (its own
     * rope_theta, else the top-level one) */
    const cJSON *theta_from = rs0 && cJSON_IsObject(rs0) ? rs0 : rp;
    if (!rc && theta_from && cJSON_IsObject(theta_from)) {
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(theta_from, "rope_theta");
        if (rt && !cJSON_IsNull(rt)) {
            double t = 0;
            rc = config_number(path, theta_from, "rope_theta", 0, &t);
            if (rc) return fdpo_error_context("%s", theta_from == rp ? "rope_parameters" : "rope_scaling");
            const cJSON *top = cJSON_GetObjectItemCaseSensitive(root, "rope_theta");
            if (top && !cJSON_IsNull(top) && t != theta)
                return fdpo_error("%s: rope_theta %g and %s.rope_theta %g differ", path, theta,
                                  theta_from == rp ? "rope_parameters" : "rope_scaling", t);
            c->rope_theta = t;
        }
    }
    if (!rc && rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp)) return fdpo_error("%s: rope_parameters must be an object", path);
    /* the scaling: rope_scaling when given (transformers v5 reads it first too), else
     * rope_parameters, whose rope_type may be left out for the default */
    const cJSON *rs = rs0 && !cJSON_IsNull(rs0) ? rs0 : NULL;
    const char *rs_name = "rope_scaling";
    if (!rs && rp && !cJSON_IsNull(rp)) { rs = rp; rs_name = "rope_parameters"; }
    if (!rc && rs) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!type) type = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if (!type && rs == rp) return rc;   /* rope_parameters {"rope_theta": X}: no scaling */
        if (cJSON_IsString(type) && !strcmp(type->valuestring, "default")) return rc;   /* no scaling, as transformers reads it */
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "llama3"))
            return fdpo_error("%s: %s type '%.32s' is not supported (fdpo implements llama3 scaling or none)",
                              path, rs_name, cJSON_IsString(type) ? type->valuestring : "(missing)");
        /* transformers requires all four for llama3 (_validate_llama3_parameters); defaults for
         * the two frequency factors (1 and 4) were taken silently and written into saved configs */
        static const char *const needed[] = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
        for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(rs, needed[i]);
            if (!v || cJSON_IsNull(v))
                return fdpo_error("%s: %s: missing '%s' (llama3 scaling needs it)", path, rs_name, needed[i]);
        }
        double orig = 0;
        rc = config_number(path, rs, "factor", 0, &c->rope_factor);
        if (!rc) rc = config_number(path, rs, "low_freq_factor", 0, &c->rope_low_freq_factor);
        if (!rc) rc = config_number(path, rs, "high_freq_factor", 0, &c->rope_high_freq_factor);
        if (!rc) rc = config_number(path, rs, "original_max_position_embeddings", 0, &orig);
        if (rc) return fdpo_error_context("%s", rs_name);   /* config_number names the key, not its object */
        /* transformers only warns on these two, but the smoothing divides by high - low (NaN
         * frequencies when equal) and a fractional context length would be cut here */
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            return fdpo_error("%s: %s: high_freq_factor %g must be greater than low_freq_factor %g", path, rs_name,
                              c->rope_high_freq_factor, c->rope_low_freq_factor);
        if (!(orig >= 1 && orig <= 1e15 && orig == floor(orig)))
            return fdpo_error("%s: %s: original_max_position_embeddings %g must be a whole number >= 1", path, rs_name, orig);
        c->rope_original_max_position = (size_t)orig;
    }
    return rc;
}

/* <Family>ForSequenceClassification (a reward model: GPT2, Llama, Qwen2) or the LM:
 * architectures, num_labels (or the size of id2label), pad_token_id. */
static int config_head(const char *path, const cJSON *root, fdpo_gpt2_config *c) {
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(arch) ? cJSON_GetArrayItem(arch, 0) : NULL;
    const char *want = fdpo_gpt2_architecture(c, 1);
    if (!cJSON_IsString(a0) || strcmp(a0->valuestring, want)) return 0;
    /* transformers' PretrainedConfig: id2label, when given, decides (a num_labels beside it
     * that disagrees is overwritten with len(id2label), with a warning); else num_labels,
     * else 2. An id2label that is not a dictionary is its ValueError. */
    const cJSON *nl = cJSON_GetObjectItemCaseSensitive(root, "num_labels");
    const cJSON *id2label = cJSON_GetObjectItemCaseSensitive(root, "id2label");
    if (id2label && !cJSON_IsNull(id2label) && !cJSON_IsObject(id2label))
        return fdpo_error("%s: field 'id2label' must be an object (id -> label)", path);
    const int by_map = cJSON_IsObject(id2label);
    double n = by_map ? cJSON_GetArraySize(id2label) : cJSON_IsNumber(nl) ? nl->valuedouble : 2;
    if (n != 1)
        return fdpo_error("%s: %s with %g labels (%s): fdpo reads reward models, which have num_labels 1", path, want,
                          n, by_map ? "the entries of id2label, which decide over num_labels" : "num_labels; no id2label");
    c->num_labels = 1;
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(root, "pad_token_id");
    /* an id outside int32 cannot name a token: read as "no pad token" (the id is advisory) */
    c->pad_token_id = cJSON_IsNumber(pad) && pad->valuedouble >= 0 && pad->valuedouble <= INT32_MAX
                          ? (int32_t)pad->valuedouble : -1;
    return 0;
}

/* what transformers writes for a num_labels 1 head, plus num_labels for readers that want it */
static void config_json_head(cJSON *root, const fdpo_gpt2_config *c) {
    cJSON_AddItemToObject(root, "id2label", cJSON_Parse("{\"0\": \"LABEL_0\"}"));
    cJSON_AddItemToObject(root, "label2id", cJSON_Parse("{\"LABEL_0\": 0}"));
    cJSON_AddNumberToObject(root, "num_labels", (double)c->num_labels);
    if (c->pad_token_id >= 0) cJSON_AddNumberToObject(root, "pad_token_id", (double)c->pad_token_id);
}

/* The token ids other tools read from config.json, kept as read when each is an integer, a
 * list of integers or an explicit null (anything else is left out: no reader of fdpo's own
 * needs them; they are only carried to the saved config; a set too long to keep is refused,
 * as saving without it would change the model's end token). A
 * null, an empty list and a negative id (the -1 pad of early LLaMA conversions) are kept,
 * not dropped: transformers fills an absent key with the class's default (LlamaConfig's
 * bos 1 / eos 2, GPT2Config's 50256), so a model read with no end token would be saved as
 * one that stops at token 2. A reward model's pad_token_id is kept too: the head reads its
 * own (config_head), and one that names no token (-1, null) is written back as read. */
static int config_special_ids(const char *path, const cJSON *root, fdpo_gpt2_config *c) {
    static const char *const keys[] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    cJSON *kept = cJSON_CreateObject();
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (cJSON_IsNull(v)) { cJSON_AddNullToObject(kept, keys[k]); continue; }
        int ok = cJSON_IsNumber(v) || cJSON_IsArray(v);
        for (const cJSON *e = cJSON_IsArray(v) ? v->child : v; ok && e; e = cJSON_IsArray(v) ? e->next : NULL)
            ok = cJSON_IsNumber(e) && e->valuedouble >= INT32_MIN && e->valuedouble <= INT32_MAX &&
                 e->valuedouble == floor(e->valuedouble);
        if (ok) cJSON_AddItemToObject(kept, keys[k], cJSON_Duplicate(v, 1));
    }
    char *js = cJSON_PrintUnformatted(kept);
    int rc = 0;
    c->special_token_ids[0] = 0;
    if (!js) rc = fdpo_error("%s: out of memory", path);
    else if (strlen(js) >= sizeof c->special_token_ids)
        rc = fdpo_error("%s: bos_token_id, eos_token_id and pad_token_id take %zu characters written compactly; "
                        "fdpo keeps at most %zu to write them back", path, strlen(js), sizeof c->special_token_ids - 1);
    else if (cJSON_GetArraySize(kept) > 0) memcpy(c->special_token_ids, js, strlen(js) + 1);
    cJSON_free(js);
    cJSON_Delete(kept);
    return rc;
}

/* the kept ids into root, after the keys it has. A head's pad_token_id is the head's
 * (config_json_head writes an id >= 0): the kept one is written only where it names no token
 * (a negative id, null, a list), as the head read it; an id >= 0 kept beside a head without
 * one (the LM's, under a head given none) is not the head's and is left out. */
static void config_json_special_ids(cJSON *root, const fdpo_gpt2_config *c) {
    cJSON *kept = c->special_token_ids[0] ? cJSON_Parse(c->special_token_ids) : NULL;
    for (const cJSON *e = kept ? kept->child : NULL; e; e = e->next) {
        if (c->num_labels && !strcmp(e->string, "pad_token_id") && cJSON_IsNumber(e) && e->valuedouble >= 0) continue;
        if (!cJSON_GetObjectItemCaseSensitive(root, e->string)) cJSON_AddItemToObject(root, e->string, cJSON_Duplicate(e, 1));
    }
    cJSON_Delete(kept);
}

void fdpo_config_set_special_ids(fdpo_gpt2_config *c, int32_t bos, int32_t eos) {
    snprintf(c->special_token_ids, sizeof c->special_token_ids, "{\"bos_token_id\":%d,\"eos_token_id\":%d}",
             (int)(bos >= 0 ? bos : eos), (int)eos);
}

int fdpo_config_load(const char *path, fdpo_gpt2_config *c) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return -1;
    int rc = fdpo_config_parse(path, text, len, c);
    free(text);
    return rc;
}

int fdpo_config_parse(const char *path, const char *text, size_t len, fdpo_gpt2_config *c) {
    /* read as Python's json reads it, or refused: a key twice (json keeps the last, cJSON the
     * first: rope_theta 10000 where transformers built 500000) or text after the object */
    cJSON *root = fdpo_jsonl_parse_object(path, 1, text, len, NULL);
    if (!root) return -1;   /* "PATH:LINE: invalid JSON near column C", "... appears twice", ... */
    int rc = 0;
    memset(c, 0, sizeof *c);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    const cJSON *by_layer = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_by_inverse_layer_idx");
    const cJSON *scale = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_weights");
    if (!mt) rc = fdpo_error("%s: missing key 'model_type' (want \"gpt2\", \"llama\" or \"qwen2\")", path);
    else if (cJSON_IsString(mt) && (!strcmp(mt->valuestring, "llama") || !strcmp(mt->valuestring, "qwen2"))) {
        static const char *const ints[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "max_position_embeddings", "num_key_value_heads",
                                           "head_dim", "num_labels", NULL};
        rc = config_integer_literals(path, text, len, root, ints);
        if (!rc) rc = config_load_llama(path, root, mt->valuestring, c);
        if (!rc) rc = config_head(path, root, c);
        if (!rc) rc = config_special_ids(path, root, c);
        cJSON_Delete(root);
        if (!rc && fdpo_gpt2_config_check(c)) rc = fdpo_error_context("%s", path);
        return rc;
    } else if (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt2"))
        rc = fdpo_error("%s: model_type '%.64s' is not supported (fdpo runs gpt2, llama and qwen2)", path,
                        cJSON_IsString(mt) ? mt->valuestring : "(not a string)");
    /* gelu_pytorch_tanh is the same tanh approximation as gelu_new (transformers' two names) */
    else if (act && !cJSON_IsNull(act) &&
             (!cJSON_IsString(act) || (strcmp(act->valuestring, "gelu_new") && strcmp(act->valuestring, "gelu_pytorch_tanh"))))
        rc = fdpo_error("%s: activation_function '%.64s' is not supported (only gelu_new, or gelu_pytorch_tanh)", path,
                        cJSON_IsString(act) ? act->valuestring : "(not a string)");
    else if (tie && cJSON_IsFalse(tie))
        rc = fdpo_error("%s: tie_word_embeddings false is not supported (the LM head is wte)", path);
    else if (by_layer && cJSON_IsTrue(by_layer))
        rc = fdpo_error("%s: scale_attn_by_inverse_layer_idx true is not supported", path);
    else if (scale && cJSON_IsFalse(scale))
        rc = fdpo_error("%s: scale_attn_weights false is not supported", path);
    static const char *const ints[] = {"vocab_size", "n_positions", "max_position_embeddings", "n_embd",
                                       "hidden_size", "n_layer", "num_hidden_layers", "n_head", "num_attention_heads",
                                       "n_inner", "num_labels", "n_ctx", NULL};
    if (!rc) rc = config_integer_literals(path, text, len, root, ints);
    if (!rc) rc = config_size(path, root, "vocab_size", NULL, &c->vocab_size);
    if (!rc) rc = config_size_aliased(path, root, "n_positions", "n_ctx", "max_position_embeddings", &c->n_positions);
    if (!rc) rc = config_size_aliased(path, root, "n_embd", NULL, "hidden_size", &c->n_embd);
    if (!rc) rc = config_size_aliased(path, root, "n_layer", NULL, "num_hidden_layers", &c->n_layer);
    if (!rc) rc = config_size_aliased(path, root, "n_head", NULL, "num_attention_heads", &c->n_head);
    /* an explicit n_inner of 4 * n_embd (Cerebras-GPT writes it) is the width fdpo builds
     * (n_embd as read above: hidden_size where that is the key given) */
    if (!rc && inner && !cJSON_IsNull(inner) && !(cJSON_IsNumber(inner) && inner->valuedouble == 4.0 * (double)c->n_embd))
        rc = fdpo_error("%s: n_inner must be null or 4 * n_embd (the MLP width fdpo builds)", path);
    if (!rc) rc = config_head(path, root, c);
    c->layer_norm_epsilon = 1e-5f;
    if (!rc && eps) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0))
            rc = fdpo_error("%s: layer_norm_epsilon must be a positive number", path);
        else c->layer_norm_epsilon = (float)eps->valuedouble;
    }
    if (!rc) rc = config_special_ids(path, root, c);
    cJSON_Delete(root);
    if (!rc && fdpo_gpt2_config_check(c)) rc = fdpo_error_context("%s", path);
    return rc;
}

/* A float-typed config field as Python's json writes a float: 8.0, never 8 (transformers'
 * llama3 check wants isinstance(factor, float) and warns on every load of an int) */
static void add_json_float(cJSON *obj, const char *key, const char *num) {
    char text[48];
    snprintf(text, sizeof text, "%s%s", num, strpbrk(num, ".en") ? "" : ".0");   /* n: null */
    cJSON_AddRawToObject(obj, key, text);
}

static cJSON *config_json_llama(const fdpo_gpt2_config *c) {
    cJSON *root = cJSON_CreateObject();
    int qwen2 = !strcmp(c->model_type, "qwen2");
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(fdpo_gpt2_architecture(c, c->num_labels > 0)));
    if (c->num_labels) config_json_head(root, c);
    if (!qwen2) cJSON_AddBoolToObject(root, "attention_bias", c->qkv_bias);
    if (c->head_dim) cJSON_AddNumberToObject(root, "head_dim", (double)c->head_dim);
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddNumberToObject(root, "hidden_size", (double)c->n_embd);
    cJSON_AddNumberToObject(root, "intermediate_size", (double)c->intermediate_size);
    cJSON_AddNumberToObject(root, "max_position_embeddings", (double)c->n_positions);
    if (!qwen2) cJSON_AddBoolToObject(root, "mlp_bias", c->mlp_bias);   /* not a Qwen2Config key */
    cJSON_AddStringToObject(root, "model_type", qwen2 ? "qwen2" : "llama");
    cJSON_AddNumberToObject(root, "num_attention_heads", (double)c->n_head);
    cJSON_AddNumberToObject(root, "num_hidden_layers", (double)c->n_layer);
    cJSON_AddNumberToObject(root, "num_key_value_heads", (double)c->n_kv_head);
    char num[32];
    fdpo_fmt_float(num, sizeof num, c->layer_norm_epsilon);
    add_json_float(root, "rms_norm_eps", num);
    if (c->rope_factor != 0) {
        cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
        fdpo_fmt_double(num, sizeof num, c->rope_factor);
        add_json_float(rs, "factor", num);
        fdpo_fmt_double(num, sizeof num, c->rope_high_freq_factor);
        add_json_float(rs, "high_freq_factor", num);
        fdpo_fmt_double(num, sizeof num, c->rope_low_freq_factor);
        add_json_float(rs, "low_freq_factor", num);
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", (double)c->rope_original_max_position);
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
    } else {
        cJSON_AddNullToObject(root, "rope_scaling");
    }
    fdpo_fmt_double(num, sizeof num, c->rope_theta);
    add_json_float(root, "rope_theta", num);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(root, "torch_dtype", "float32");
    if (qwen2) cJSON_AddBoolToObject(root, "use_sliding_window", 0);
    cJSON_AddNumberToObject(root, "vocab_size", (double)c->vocab_size);
    return root;
}

static cJSON *config_json_gpt2(const fdpo_gpt2_config *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "activation_function", "gelu_new");
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(fdpo_gpt2_architecture(c, c->num_labels > 0)));
    if (c->num_labels) config_json_head(root, c);
    char eps[32];
    fdpo_fmt_float(eps, sizeof eps, c->layer_norm_epsilon);
    cJSON_AddRawToObject(root, "layer_norm_epsilon", eps);
    cJSON_AddStringToObject(root, "model_type", "gpt2");
    cJSON_AddNumberToObject(root, "n_ctx", (double)c->n_positions);
    cJSON_AddNumberToObject(root, "n_embd", (double)c->n_embd);
    cJSON_AddNumberToObject(root, "n_head", (double)c->n_head);
    cJSON_AddNumberToObject(root, "n_layer", (double)c->n_layer);
    cJSON_AddNumberToObject(root, "n_positions", (double)c->n_positions);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", 1);
    cJSON_AddNumberToObject(root, "vocab_size", (double)c->vocab_size);
    return root;
}

int fdpo_config_save(const char *path, const fdpo_gpt2_config *c) {
    if (fdpo_gpt2_config_check(c)) return fdpo_error_context("%s", path);
    cJSON *root = c->arch == FDPO_ARCH_LLAMA ? config_json_llama(c) : config_json_gpt2(c);
    config_json_special_ids(root, c);
    int rc = fdpo_write_json_atomic(path, root, 1);
    cJSON_Delete(root);
    return rc;
}

/* "transformer.h.{i}.x" -> "transformer.h.<layer>.x" (or the name itself) into buf */
/* prefix (may be NULL) + pattern with "{i}" replaced by layer */
static void tensor_name(char *buf, size_t n, const char *prefix, const char *pattern, size_t layer) {
    const char *brace = strstr(pattern, "{i}"), *p = prefix ? prefix : "";
    if (!brace) snprintf(buf, n, "%s%s", p, pattern);
    else snprintf(buf, n, "%s%.*s%zu%s", p, (int)(brace - pattern), pattern, layer, brace + 3);
}

static void fmt_shape(char *buf, size_t n, const size_t *shape, int ndim) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++) k += (size_t)snprintf(buf + k, n - k, "%s%zu", i ? "," : "", shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Is this a tensor name we know and skip? (causal-mask and rotary buffers, the tied LM head) */
static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}
static int is_skipped_name(const char *name) {
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") || ends_with(name, "rotary_emb.inv_freq") ||
           !strcmp(name, "lm_head.weight");
}

/* The safetensors file(s) of a checkpoint: model.safetensors, or the shards named by
 * model.safetensors.index.json ({"weight_map": {tensor: file}}). */
typedef struct { fdpo_safetensors *files; size_t n; char *where; } st_set;

static void st_set_close(st_set *s) {
    for (size_t i = 0; i < s->n; i++) if (s->files[i].map) fdpo_st_close(&s->files[i]);
    free(s->files); free(s->where);
    memset(s, 0, sizeof *s);
}

static int st_set_open(st_set *s, const char *dir) {
    memset(s, 0, sizeof *s);
    char *single = fdpo_path_join(dir, "model.safetensors"), *index = fdpo_path_join(dir, "model.safetensors.index.json");
    int rc = 0;
    if (fdpo_file_exists(single)) {
        s->files = fdpo_calloc(1, sizeof *s->files);
        s->where = single; single = NULL;
        rc = fdpo_st_open(&s->files[0], s->where);
        if (!rc) s->n = 1;
    } else if (fdpo_file_exists(index)) {
        size_t len;
        char *text = fdpo_read_file(index, &len);
        cJSON *root = text ? fdpo_jsonl_parse_object(index, 1, text, len, NULL) : NULL;   /* as config.json */
        free(text);
        const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        s->where = index; index = NULL;
        if (!root) rc = -1;
        else if (!cJSON_IsObject(map)) rc = fdpo_error("%s: no \"weight_map\" object (a sharded checkpoint index is expected)", s->where);
        size_t cap = 0;
        for (const cJSON *e = map ? map->child : NULL; !rc && e; e = e->next) {
            if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !*e->valuestring) {
                rc = fdpo_error("%s: weight_map['%.64s'] must name a shard file in the directory", s->where, e->string);
                break;
            }
            /* the same name, not one ending in it: 2-of-00002.safetensors is not model-2-of-00002's */
            char *shard = fdpo_path_join(dir, e->valuestring);
            int seen = 0;
            for (size_t i = 0; i < s->n && !seen; i++) seen = !strcmp(s->files[i].path, shard);
            if (seen) { free(shard); continue; }
            if (s->n == cap) { cap = cap ? 2 * cap : 4; s->files = fdpo_realloc(s->files, cap * sizeof *s->files); }
            memset(&s->files[s->n], 0, sizeof s->files[s->n]);
            if (!fdpo_file_exists(shard)) rc = fdpo_error("%s: shard '%s' listed in %s is missing", shard, e->valuestring, s->where);
            else rc = fdpo_st_open(&s->files[s->n], shard);
            free(shard);
            if (!rc) s->n++;
        }
        if (!rc && s->n == 0) rc = fdpo_error("%s: weight_map lists no shards", s->where);
        cJSON_Delete(root);
    } else {
        rc = fdpo_error("%s: missing (fdpo reads model.safetensors or a sharded model.safetensors.index.json; "
                        "convert .bin checkpoints first)", single);
    }
    free(single); free(index);
    return rc;
}

static const fdpo_st_tensor *st_set_find(const st_set *s, const char *name, size_t *file) {
    for (size_t i = 0; i < s->n; i++) {
        const fdpo_st_tensor *t = fdpo_st_find(&s->files[i], name);
        if (t) { *file = i; return t; }
    }
    return NULL;
}

static size_t count_non_finite(const float *x, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    return bad;
}

int fdpo_checkpoint_check_tokenizer(const char *dir, const fdpo_gpt2_config *c, const fdpo_tokenizer *t) {
    size_t tv = fdpo_tokenizer_vocab_size(t), mv = c->vocab_size;
    if (tv > mv)
        return fdpo_error("%s: the tokenizer has %zu tokens but config.json vocab_size is %zu (ids %zu..%zu would have "
                          "no embedding row; wrong tokenizer or config?)", dir, tv, mv, mv, tv - 1);
    return 0;
}

/* DIR/generation_config.json, kept as read so that every save writes it again: Hugging Face's
 * generate takes its defaults from it (an instruct model's end-of-turn ids among its
 * eos_token_id, its sampling settings), and a fine-tuned Llama-3-Instruct saved without it
 * generated past its end of turn. fdpo itself does not read it. NULL when absent; unreadable,
 * or not a JSON object as transformers reads one (fdpo_json_check_python_object: not UTF-8,
 * an invalid \u escape, a raw control character, text after the object, ...; transformers
 * could not load it from the checkpoints): said with FILE:LINE and column, and not carried. */
static char *read_generation_config(const char *dir) {
    char *path = fdpo_path_join(dir, "generation_config.json");
    size_t len = 0;
    char *text = NULL;
    if (fdpo_file_exists(path)) {   /* as transformers, which falls back to the model config's */
        /* carried, not read: refused only where transformers (Python's json) refuses it */
        if (!(text = fdpo_read_file(path, &len)) || fdpo_json_check_python_object(path, text, len)) {
            fdpo_log(FDPO_LOG_WARN, "%s; left out of the checkpoints written from this model", fdpo_last_error());
            fdpo_clear_error();
            free(text);
            text = NULL;
        }
    }
    free(path);
    return text;
}

static int has_f64(const st_set *s) {
    for (size_t f = 0; f < s->n; f++)
        for (size_t k = 0; k < s->files[f].n_tensors; k++)
            if (s->files[f].tensors[k].dtype == FDPO_F64) return 1;
    return 0;
}

/* exact: NULL, or set to the parameters in double as the files hold them where a tensor is
 * F64 (which the model's float rounds), else to NULL */
static fdpo_gpt2 *load_model(const char *dir, double **exact) {
    if (exact) *exact = NULL;
    char *probe = fdpo_path_join(dir, "config.json");
    int no_config = !fdpo_file_exists(probe);
    free(probe);
    if (no_config && fdpo_lora_dir_has_adapter(dir))   /* a LoRA run's output: its base + the adapters */
        return fdpo_lora_load_checkpoint(dir);
    char *cfg_path = fdpo_path_join(dir, "config.json");
    fdpo_gpt2 *m = NULL;
    st_set ss = {0};
    fdpo_gpt2_config c;
    int rc = fdpo_config_load(cfg_path, &c);
    if (!rc) rc = st_set_open(&ss, dir);
    if (!rc) {
        /* A config much larger than the file (a typo in n_embd, the wrong config.json) must
         * not allocate gigabytes before the per-tensor checks below name the culprit; small
         * models go straight to those more precise checks. */
        double want = fdpo_gpt2_config_n_params(&c), in_file = 0;
        for (size_t f = 0; f < ss.n; f++)
            for (size_t k = 0; k < ss.files[f].n_tensors; k++) {
                double numel = 1;
                for (int d = 0; d < ss.files[f].tensors[k].ndim; d++) numel *= (double)ss.files[f].tensors[k].shape[d];
                in_file += numel;
            }
        if (want > in_file && want > 16777216.0)
            rc = fdpo_error("%s: config.json implies %.0f parameters but %s holds only %.0f values", cfg_path, want, ss.where, in_file);
    }
    if (!rc && fdpo_model_env_check()) rc = -1;   /* the environment's fault, not config.json's */
    if (!rc && !(m = fdpo_gpt2_create(&c))) rc = fdpo_error_context("%s", cfg_path);
    double *values = NULL;   /* *exact */
    if (!rc && exact && has_f64(&ss)) values = fdpo_calloc(m->n_params, sizeof *values);
    size_t **used = NULL;
    if (!rc) {
        used = fdpo_calloc(ss.n, sizeof *used);
        for (size_t f = 0; f < ss.n; f++) used[f] = fdpo_calloc(ss.files[f].n_tensors ? ss.files[f].n_tensors : 1, sizeof(size_t));
    }
    for (int i = 0; !rc && i < (int)m->n_tensors; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        size_t n_copies = t->per_layer ? c.n_layer : 1, one = t->numel / n_copies;
        for (size_t l = 0; !rc && l < n_copies; l++) {
            char name[160];
            tensor_name(name, sizeof name, NULL, t->name, l);
            size_t fi = 0;
            const fdpo_st_tensor *f = st_set_find(&ss, name, &fi);
            if (!f && c.arch == FDPO_ARCH_GPT2) f = st_set_find(&ss, name + strlen("transformer."), &fi);
            if (!f) { rc = fdpo_error("%s: missing tensor '%s'", ss.where, name); break; }
            used[fi][f - ss.files[fi].tensors] = 1;
            size_t want_shape[3] = {t->shape[0], t->shape[1], t->shape[2]};
            if (i == 0 && c.num_labels && c.arch == FDPO_ARCH_GPT2) {
                /* a reward model: wte in the file has vocab_size rows, score.weight the rest */
                want_shape[0] = c.vocab_size;
                one = c.vocab_size * c.n_embd;
                size_t sfi = 0;
                const fdpo_st_tensor *sw = st_set_find(&ss, "score.weight", &sfi);
                if (!sw) { rc = fdpo_error("%s: config.json says GPT2ForSequenceClassification but tensor 'score.weight' is missing", ss.where); break; }
                used[sfi][sw - ss.files[sfi].tensors] = 1;
                if (sw->ndim != 2 || sw->shape[0] != c.num_labels || sw->shape[1] != c.n_embd) {
                    rc = fdpo_error("%s: tensor 'score.weight' must be [%zu, %zu]", ss.files[sfi].path, c.num_labels, c.n_embd);
                    break;
                }
                float *score = m->params_memory + t->offset + one;
                rc = fdpo_st_read_f32(&ss.files[sfi], sw, score, c.num_labels * c.n_embd);
                if (!rc && values) rc = fdpo_st_read_f64(&ss.files[sfi], sw, values + (score - m->params_memory), c.num_labels * c.n_embd);
                size_t bad = rc ? 0 : count_non_finite(score, c.num_labels * c.n_embd);   /* as every tensor */
                if (bad) rc = fdpo_error("%s: tensor 'score.weight' has %zu non-finite value%s (NaN or Inf)",
                                         ss.files[sfi].path, bad, bad == 1 ? "" : "s");
                if (rc) break;
            }
            int same = f->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = f->shape[d] == want_shape[d];
            if (!same) {
                char have[96], want[96];
                fmt_shape(have, sizeof have, f->shape, f->ndim);
                fmt_shape(want, sizeof want, want_shape, t->ndim);
                rc = fdpo_error("%s: tensor '%s': shape %s, but config.json (V=%zu, T=%zu, C=%zu) wants %s",
                                ss.files[fi].path, f->name, have, c.vocab_size, c.n_positions, c.n_embd, want);
                break;
            }
            float *dst = m->params_memory + t->offset + l * one;
            rc = fdpo_st_read_f32(&ss.files[fi], f, dst, one);
            if (!rc && values) rc = fdpo_st_read_f64(&ss.files[fi], f, values + t->offset + l * one, one);
            /* NaN/Inf weights would only show up later as empty samples or a "diverged" run */
            size_t bad = rc ? 0 : count_non_finite(dst, one);
            if (bad) rc = fdpo_error("%s: tensor '%s' has %zu non-finite value%s (NaN or Inf)", ss.files[fi].path, f->name, bad,
                                     bad == 1 ? "" : "s");
        }
    }
    /* a present lm_head.weight must be the tied embedding; anything else unknown means a different model */
    for (size_t fi = 0; !rc && fi < ss.n; fi++)
        for (size_t k = 0; !rc && k < ss.files[fi].n_tensors; k++) {
            const fdpo_st_tensor *f = &ss.files[fi].tensors[k];
            if (used[fi][k]) continue;
            size_t first;
            const fdpo_st_tensor *other = st_set_find(&ss, f->name, &first);
            if (other && first != fi) {   /* read from the first shard that holds it */
                rc = fdpo_error("%s: tensor '%s' is also in %s (a tensor belongs in one shard)", ss.files[fi].path, f->name,
                                ss.files[first].path);
                break;
            }
            if (!strcmp(f->name, "score.weight")) {
                rc = fdpo_error("%s: unexpected tensor 'score.weight' (a reward-model head, but config.json's architectures "
                                "is not a ...ForSequenceClassification)", ss.files[fi].path);
                break;
            }
            /* transformers loads such a checkpoint leaving the biases unused (with a warning):
             * refused, as a Qwen2 o_proj.bias is, rather than dropped without a word */
            if (c.arch == FDPO_ARCH_LLAMA && !strcmp(c.model_type, "qwen2") && strstr(f->name, ".mlp.") &&
                ends_with(f->name, ".bias")) {
                rc = fdpo_error("%s: unexpected tensor '%s' (Qwen2's MLP has no biases, whatever config.json's mlp_bias "
                                "says: transformers' Qwen2MLP would leave it unused)", ss.files[fi].path, f->name);
                break;
            }
            if (!is_skipped_name(f->name)) {
                rc = fdpo_error("%s: unexpected tensor '%s' (not part of a %s model with this config)", ss.files[fi].path, f->name,
                                c.arch == FDPO_ARCH_LLAMA ? c.model_type : "gpt2");
                break;
            }
            if (strcmp(f->name, "lm_head.weight")) continue;
            /* a reward model has no LM head (tied or not): transformers' ...ForSequenceClassification
             * leaves the tensor unused, and so does fdpo (it said "config.json ties them" when it said false) */
            if (c.num_labels) continue;
            size_t n = c.vocab_size * c.n_embd;
            float *head = fdpo_malloc(n * sizeof(float));
            rc = fdpo_st_read_f32(&ss.files[fi], f, head, n);
            if (!rc && memcmp(head, m->params_memory + m->tensors[0].offset, n * sizeof(float)))
                rc = fdpo_error("%s: tensor 'lm_head.weight' differs from the token embedding, but config.json ties them",
                                ss.files[fi].path);
            free(head);
        }
    if (used) for (size_t f = 0; f < ss.n; f++) free(used[f]);
    free(used);
    st_set_close(&ss);
    free(cfg_path);
    if (!rc) m->generation_config = read_generation_config(dir);
    if (rc) { fdpo_gpt2_free(m); free(values); return NULL; }
    if (exact) *exact = values;
    return m;
}

fdpo_gpt2 *fdpo_checkpoint_load_model(const char *dir) { return load_model(dir, NULL); }

fdpo_gpt2 *fdpo_checkpoint_load_model_exact(const char *dir, double **exact) { return load_model(dir, exact); }

void fdpo_st_writer_add_gpt2(fdpo_st_writer *w, const fdpo_gpt2 *m, const float *memory, const char *prefix) {
    for (int i = 0; i < (int)m->n_tensors; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        size_t n_copies = t->per_layer ? m->config.n_layer : 1, one = t->numel / n_copies;
        for (size_t l = 0; l < n_copies; l++) {
            char full[256];
            tensor_name(full, sizeof full, prefix, t->name, l);
            fdpo_st_writer_add(w, full, FDPO_F32, t->shape, t->ndim, memory + t->offset + l * one);
        }
    }
}

int fdpo_st_read_gpt2(const fdpo_safetensors *st, const fdpo_gpt2 *m, float *memory, const char *prefix) {
    unsigned char *used = fdpo_calloc(st->n_tensors + 1, 1);
    int rc = 0;
    for (int i = 0; !rc && i < (int)m->n_tensors; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        size_t n_copies = t->per_layer ? m->config.n_layer : 1, one = t->numel / n_copies;
        for (size_t l = 0; !rc && l < n_copies; l++) {
            char full[256];
            tensor_name(full, sizeof full, prefix, t->name, l);
            const fdpo_st_tensor *f = fdpo_st_find(st, full);
            if (!f) { rc = fdpo_error("%s: missing tensor '%s'", st->path, full); break; }
            used[f - st->tensors] = 1;
            int same = f->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = f->shape[d] == t->shape[d];
            if (!same) {
                char have[96], want[96];
                fmt_shape(have, sizeof have, f->shape, f->ndim);
                fmt_shape(want, sizeof want, t->shape, t->ndim);
                rc = fdpo_error("%s: tensor '%s': shape %s, the model wants %s", st->path, full, have, want);
                break;
            }
            /* F64 would round to float before the LoRA fold sums in double: two roundings (PEFT
             * writes the model's dtype; fdpo's adapters are F32) */
            if (f->dtype == FDPO_F64) {
                rc = fdpo_error("%s: tensor '%s': dtype F64 (adapter tensors are F32, F16 or BF16)", st->path, full);
                break;
            }
            float *dst = memory + t->offset + l * one;
            if (fdpo_st_read_f32(st, f, dst, one)) { rc = -1; break; }
            size_t bad = count_non_finite(dst, one);   /* as the model's own tensors (fdpo_checkpoint_load_model) */
            if (bad) rc = fdpo_error("%s: tensor '%s' has %zu non-finite value%s (NaN or Inf)", st->path, full, bad,
                                     bad == 1 ? "" : "s");
        }
    }
    /* a tensor the model does not read would be dropped without a word (PEFT's lora_B.bias of
     * lora_bias, a module outside target_modules): refused, as the model loader refuses one */
    for (size_t k = 0; !rc && k < st->n_tensors; k++)
        if (!used[k] && (!prefix || !strncmp(st->tensors[k].name, prefix, strlen(prefix))))
            rc = fdpo_error("%s: unexpected tensor '%s' (not one this model reads: it would be ignored)", st->path,
                            st->tensors[k].name);
    free(used);
    return rc;
}

/* A reward model keeps score.weight as the last row(s) of wte (gpt2.h); in the file wte
 * has vocab_size rows and score.weight [num_labels, C] stands alone, as transformers has it. */
static void add_reward_model(fdpo_st_writer *w, const fdpo_gpt2 *m) {
    size_t V = m->config.vocab_size, C = m->config.n_embd;
    fdpo_gpt2 view = *m; /* the same tensors with wte cut to its vocab_size rows */
    view.tensors[0].shape[0] = V;
    view.tensors[0].numel = V * C;
    fdpo_st_writer_add_gpt2(w, &view, m->params_memory, NULL);
    size_t shape[2] = {m->config.num_labels, C};
    fdpo_st_writer_add(w, "score.weight", FDPO_F32, shape, 2, m->params_memory + m->tensors[0].offset + V * C);
}

void fdpo_gpt2_param_name(const fdpo_gpt2 *m, size_t k, char *buf, size_t size) {
    for (size_t i = 0; i < m->n_tensors; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        if (k < t->offset || k - t->offset >= t->numel) continue;
        size_t n_copies = t->per_layer ? m->config.n_layer : 1, one = t->numel / n_copies;
        size_t layer = (k - t->offset) / one, at = (k - t->offset) % one, cols = t->ndim > 1 ? t->shape[1] : 0;
        char name[160];
        tensor_name(name, sizeof name, NULL, t->name, layer);
        size_t V = m->config.vocab_size, C = m->config.n_embd;
        if (i == 0 && m->config.num_labels && m->config.arch == FDPO_ARCH_GPT2 && at >= V * C) {
            snprintf(name, sizeof name, "score.weight");   /* wte's last rows (add_reward_model) */
            at -= V * C;
        }
        if (cols) snprintf(buf, size, "%s[%zu,%zu]", name, at / cols, at % cols);
        else snprintf(buf, size, "%s[%zu]", name, at);
        return;
    }
    snprintf(buf, size, "parameter %zu", k);   /* past the table: not one of m's parameters */
}

int fdpo_weights_finite(const char *dir, const fdpo_gpt2 *m) {
    size_t bad = 0;
    const float *w = m->params_memory;
    #pragma omp parallel for reduction(+ : bad) schedule(static)
    for (size_t i = 0; i < m->n_params; i++) bad += !isfinite(w[i]);
    if (bad)
        return fdpo_error("%s: not saved: %zu of the model's %zu weights are not finite (NaN or Inf; an update or a "
                          "merge overflowed float: a lower --lr, --weight-decay or merge weight)", dir, bad, m->n_params);
    return 0;
}

int fdpo_checkpoint_save_model(const char *dir, const fdpo_gpt2 *m) {
    /* a loader refuses such a file: writing it would replace a good checkpoint with one nothing reads */
    if (fdpo_weights_finite(dir, m)) return -1;
    if (fdpo_mkdir_p(dir)) return -1;
    char *cfg_path = fdpo_path_join(dir, "config.json");
    char *st_path = fdpo_path_join(dir, "model.safetensors");
    int rc = fdpo_config_save(cfg_path, &m->config);
    if (!rc) {
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_meta(w, "format", "pt");
        if (m->config.num_labels && m->config.arch == FDPO_ARCH_GPT2) add_reward_model(w, m);
        else fdpo_st_writer_add_gpt2(w, m, m->params_memory, NULL);
        rc = fdpo_st_writer_write(w, st_path);
        fdpo_st_writer_free(w);
    }
    if (!rc) {   /* this model's, or none (a reward model does not generate): never a replaced model's */
        char *gen_path = fdpo_path_join(dir, "generation_config.json");
        if (m->generation_config && !m->config.num_labels)
            rc = fdpo_write_file_atomic(gen_path, m->generation_config, strlen(m->generation_config));
        else if (remove(gen_path) != 0 && errno != ENOENT)
            rc = fdpo_error("%s: cannot remove the replaced model's file: %s", gen_path, strerror(errno));
        free(gen_path);
    }
    free(cfg_path);
    free(st_path);
    return rc;
}

int fdpo_checkpoint_file_kind(const char *name) {
    static const char *const model[] = {"config.json", "generation_config.json", "model.safetensors",
                                        "model.safetensors.index.json", "adapter_config.json",
                                        "adapter_model.safetensors", "training_state.json", "training_state.safetensors"};
    static const char *const tokenizer[] = {"fdpo_tokenizer.json", "tokenizer.json", "vocab.json", "merges.txt",
                                            "encoder.json", "vocab.bpe", "tokenizer_config.json", "chat_template.jinja",
                                            "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof model / sizeof model[0]; i++) if (!strcmp(name, model[i])) return FDPO_CKPT_FILE_MODEL;
    for (size_t i = 0; i < sizeof tokenizer / sizeof tokenizer[0]; i++)
        if (!strcmp(name, tokenizer[i])) return FDPO_CKPT_FILE_TOKENIZER;
    size_t n = strlen(name), suffix = strlen(".safetensors");   /* a shard: model-00001-of-00002.safetensors */
    return !strncmp(name, "model-", 6) && n > 6 + suffix && !strcmp(name + n - suffix, ".safetensors")
               ? FDPO_CKPT_FILE_MODEL : 0;
}
