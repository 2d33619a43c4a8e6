/* Hugging Face PEFT adapter files: adapter_config.json + adapter_model.safetensors
 * (include/fdpo/lora.h). Key names follow PEFT's get_peft_model_state_dict for a
 * PeftModelForCausalLM: "base_model.model." + the module path + ".lora_A.weight" [r, in] /
 * ".lora_B.weight" [out, r], the adapter name ("default") removed. */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "fdpo/io.h"
#include "fdpo/lora.h"
#include "fdpo/tokenizer.h"

int fdpo_lora_dir_has_adapter(const char *dir) {
    char *p = fdpo_path_join(dir, "adapter_config.json");
    int has = fdpo_file_exists(p);
    free(p);
    return has;
}

int fdpo_lora_is_checkpoint(const char *dir) {
    char *cfg = fdpo_path_join(dir, "config.json");
    int adapter = !fdpo_file_exists(cfg) && fdpo_lora_dir_has_adapter(dir);
    free(cfg);
    return adapter;
}

int fdpo_lora_save_peft(const char *dir, const fdpo_gpt2 *m, const char *base_model) {
    const fdpo_lora *l = m->lora;
    if (!l) return fdpo_error("%s: the model has no LoRA adapters to save", dir);
    if (fdpo_weights_finite(dir, &l->view)) return -1;
    if (fdpo_mkdir_p(dir)) return -1;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddStringToObject(c, "task_type", l->score_tensor >= 0 ? "SEQ_CLS" : "CAUSAL_LM");
    cJSON_AddNumberToObject(c, "r", (double)l->r);
    cJSON_AddNumberToObject(c, "lora_alpha", l->alpha);
    cJSON_AddNumberToObject(c, "lora_dropout", l->dropout);
    cJSON *targets = cJSON_AddArrayToObject(c, "target_modules");
    for (const char *p = l->targets; *p;) {
        size_t len = strcspn(p, ",");
        char buf[128];
        const char *s = p;
        while (len && *s == ' ') { s++; len--; }
        while (len && s[len - 1] == ' ') len--;
        snprintf(buf, sizeof buf, "%.*s", (int)len, s);
        if (*buf) cJSON_AddItemToArray(targets, cJSON_CreateString(buf));
        p += strcspn(p, ",");
        if (*p) p++;
    }
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddBoolToObject(c, "fan_in_fan_out", m->config.arch == FDPO_ARCH_GPT2); /* Conv1D [in, out] */
    if (base_model) cJSON_AddStringToObject(c, "base_model_name_or_path", base_model);
    else cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddBoolToObject(c, "inference_mode", 1);
    cJSON_AddBoolToObject(c, "init_lora_weights", 1);
    cJSON_AddBoolToObject(c, "use_rslora", 0);
    cJSON_AddBoolToObject(c, "use_dora", 0);
    if (l->score_tensor >= 0) cJSON_AddItemToArray(cJSON_AddArrayToObject(c, "modules_to_save"), cJSON_CreateString("score"));
    else cJSON_AddNullToObject(c, "modules_to_save");
    cJSON_AddNullToObject(c, "layers_to_transform");
    cJSON_AddNullToObject(c, "revision");
    char *cfg_path = fdpo_path_join(dir, "adapter_config.json");
    char *st_path = fdpo_path_join(dir, "adapter_model.safetensors");
    int rc = fdpo_write_json_atomic(cfg_path, c, 1);
    cJSON_Delete(c);
    if (!rc) {
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_add_gpt2(w, &l->view, l->view.params_memory, NULL);
        fdpo_st_writer_meta(w, "format", "pt");
        rc = fdpo_st_writer_write(w, st_path);
        fdpo_st_writer_free(w);
    }
    free(cfg_path);
    free(st_path);
    return rc;
}

static cJSON *read_config(const char *path) {
    size_t len;
    char *text = fdpo_read_file(path, &len);
    if (!text) return NULL;
    cJSON *j = fdpo_jsonl_parse_object(path, 1, text, len, NULL);   /* as config.json: a key twice, text after it */
    free(text);
    return j;
}

fdpo_tokenizer *fdpo_checkpoint_load_tokenizer(const char *dir) {
    if (fdpo_lora_is_checkpoint(dir) && !fdpo_tokenizer_dir_has_files(dir)) {
        char *base;
        if (fdpo_lora_peft_base_read(dir, &base)) return NULL;
        if (base) {
            fdpo_tokenizer *t = fdpo_tokenizer_load_dir(base);
            if (!t) fdpo_error_context("%s: the tokenizer of its base_model_name_or_path %s", dir, base);
            free(base);
            return t;
        }
    }
    return fdpo_tokenizer_load_dir(dir);
}

int fdpo_checkpoint_has_tokenizer(const char *dir) {
    if (fdpo_tokenizer_dir_has_files(dir)) return 1;
    if (!fdpo_lora_is_checkpoint(dir)) return 0;
    char *base = fdpo_lora_peft_base(dir);   /* an adapter without its own: its base's */
    int has = base && fdpo_tokenizer_dir_has_files(base);
    free(base);
    return has;
}

int fdpo_lora_peft_base_read(const char *dir, char **base) {
    char *path = fdpo_path_join(dir, "adapter_config.json");
    cJSON *j = read_config(path);
    free(path);
    *base = NULL;
    if (!j) return -1;   /* the error names the file and line */
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "base_model_name_or_path");
    if (cJSON_IsString(b) && *b->valuestring) *base = fdpo_strdup(b->valuestring);
    cJSON_Delete(j);
    return 0;
}

char *fdpo_lora_peft_base(const char *dir) {
    char *base;
    if (fdpo_lora_peft_base_read(dir, &base)) fdpo_clear_error();
    return base;
}

/* Python's truthiness of a JSON value, as PEFT reads its config's flags (`if use_rslora:`):
 * absent, null, false, 0, "", [] and {} are false, anything else true */
static int json_truthy(const cJSON *x) {
    if (!x || cJSON_IsNull(x) || cJSON_IsFalse(x)) return 0;
    if (cJSON_IsNumber(x)) return x->valuedouble != 0;
    if (cJSON_IsString(x)) return *x->valuestring != 0;
    if (cJSON_IsArray(x) || cJSON_IsObject(x)) return x->child != NULL;
    return 1;
}

/* The modules of m's Hugging Face model ({i}: each layer), for PEFT's modules_to_save */
static const char *const gpt2_modules[] = {
    "transformer", "transformer.wte", "transformer.wpe", "transformer.drop", "transformer.h", "transformer.h.{i}",
    "transformer.h.{i}.ln_1", "transformer.h.{i}.attn", "transformer.h.{i}.attn.c_attn", "transformer.h.{i}.attn.c_proj",
    "transformer.h.{i}.attn.attn_dropout", "transformer.h.{i}.attn.resid_dropout", "transformer.h.{i}.ln_2",
    "transformer.h.{i}.mlp", "transformer.h.{i}.mlp.c_fc", "transformer.h.{i}.mlp.c_proj", "transformer.h.{i}.mlp.act",
    "transformer.h.{i}.mlp.dropout", "transformer.ln_f", NULL};
static const char *const llama_modules[] = {
    "model", "model.embed_tokens", "model.layers", "model.layers.{i}", "model.layers.{i}.self_attn",
    "model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj", "model.layers.{i}.self_attn.v_proj",
    "model.layers.{i}.self_attn.o_proj", "model.layers.{i}.mlp", "model.layers.{i}.mlp.gate_proj",
    "model.layers.{i}.mlp.up_proj", "model.layers.{i}.mlp.down_proj", "model.layers.{i}.mlp.act_fn",
    "model.layers.{i}.input_layernorm", "model.layers.{i}.post_attention_layernorm", "model.norm", "model.rotary_emb", NULL};

/* 1 when a modules_to_save entry names a module of m: PEFT's rule, the module's full name or a
 * '.'-suffix of it (PEFT ignores an entry that matches none) */
static int names_a_module(const fdpo_gpt2 *m, const char *entry) {
    const char *head = m->config.num_labels ? "score" : "lm_head";
    for (const char *const *p = m->config.arch == FDPO_ARCH_LLAMA ? llama_modules : gpt2_modules; ; p++) {
        const char *pattern = *p ? *p : head;
        const char *brace = strstr(pattern, "{i}");
        for (size_t i = 0; i < (brace ? m->config.n_layer : 1); i++) {
            char path[128];
            if (brace) snprintf(path, sizeof path, "%.*s%zu%s", (int)(brace - pattern), pattern, i, brace + 3);
            else snprintf(path, sizeof path, "%s", pattern);
            if (fdpo_lora_name_matches(path, entry)) return 1;
        }
        if (!*p) return 0;
    }
}

/* a target_modules entry with a layer index among its dotted parts ("layers.0.self_attn.q_proj",
 * "h.3.mlp.c_fc"): one layer's module, where fdpo's targets name a module of every layer
 * ("mlp.c_proj" is one) */
static int names_a_layer(const char *entry) {
    for (const char *p = entry; *p;) {
        size_t n = strcspn(p, ".");
        if (n > 0 && strspn(p, "0123456789") >= n) return 1;
        p += n;
        if (*p == '.') p++;
    }
    return 0;
}

int fdpo_lora_config_parse(const char *path, const char *text, size_t len, const fdpo_gpt2 *m, fdpo_lora_opts *o,
                           char **targets_out) {
    char *targets = NULL;
    int rc = -1;
    *targets_out = NULL;
    cJSON *j = fdpo_jsonl_parse_object(path, 1, text, len, NULL);   /* as config.json: a key twice, text after it */
    if (!j) goto done;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(j, "lora_dropout");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(j, "target_modules");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(j, "bias");
    const cJSON *fifo = cJSON_GetObjectItemCaseSensitive(j, "fan_in_fan_out");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA")) { fdpo_error("%s: peft_type must be \"LORA\"", path); goto done; }
    if (!cJSON_IsNumber(r) || !(r->valuedouble >= 1 && r->valuedouble <= 65536) || r->valuedouble != (double)(long)r->valuedouble) {
        fdpo_error("%s: r must be an integer in [1, 65536]", path); goto done;
    }
    /* absent: PEFT's LoraConfig default, 8 */
    if (alpha && !cJSON_IsNull(alpha) && !cJSON_IsNumber(alpha)) { fdpo_error("%s: lora_alpha must be a number", path); goto done; }
    const double alpha_value = cJSON_IsNumber(alpha) ? alpha->valuedouble : 8.0;
    if (!(alpha_value > 0) || !isfinite(alpha_value)) { fdpo_error("%s: lora_alpha %g must be a number > 0", path, alpha_value); goto done; }
    if (dropout && !cJSON_IsNull(dropout) && !cJSON_IsNumber(dropout)) { fdpo_error("%s: lora_dropout must be a number", path); goto done; }
    if (cJSON_IsNumber(dropout) && !(dropout->valuedouble >= 0 && dropout->valuedouble < 1)) {
        fdpo_error("%s: lora_dropout %g must be in [0, 1)", path, dropout->valuedouble); goto done;
    }
    if (bias && !cJSON_IsNull(bias) && (!cJSON_IsString(bias) || strcmp(bias->valuestring, "none"))) {
        fdpo_error("%s: bias must be \"none\" (fdpo's adapters have no bias terms)", path); goto done;
    }
    /* lora_bias (PEFT >= 0.14): a bias on lora_B, which fdpo's adapters do not have. Any value
     * PEFT takes as true (1, "yes": it tests them with Python's `if`) is refused: rsLoRA
     * (scale alpha/sqrt(r)) has no tensor of its own, so a missed one gives other numbers. */
    static const char *const unsupported[] = {"use_rslora", "use_dora", "lora_bias"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
        if (json_truthy(cJSON_GetObjectItemCaseSensitive(j, unsupported[i]))) {
            fdpo_error("%s: %s is not supported", path, unsupported[i]); goto done;
        }
    /* Activated LoRA (PEFT >= 0.17): the adapter acts only from the last occurrence of these
     * tokens on (the base model where they do not occur), and PEFT cannot merge it; fdpo
     * would apply it to every token. It adds no tensor, so only this key tells; PEFT takes any
     * value but null as aLoRA (use_alora = alora_invocation_tokens is not None), [] too. */
    const cJSON *alora = cJSON_GetObjectItemCaseSensitive(j, "alora_invocation_tokens");
    if (alora && !cJSON_IsNull(alora)) {
        fdpo_error("%s: alora_invocation_tokens is not supported (Activated LoRA, an adapter that acts only after its "
                   "invocation tokens; fdpo applies an adapter to every token)", path);
        goto done;
    }
    /* PiSSA, OLoRA, CorDA and LoftQ initialise the adapter from the base weights and change
     * those: PEFT subtracts the adapter's initial product from the base when it loads such a
     * file, so B·A added to the unchanged base is another model. PEFT's save_pretrained with
     * path_initial_model_for_weight_conversion writes a plain adapter of the same model
     * (init_lora_weights true). Kept: true and false, "gaussian", "eva" and "orthogonal" (they set
     * A and B only; orthogonal's B·A is 0); any other value is refused as unknown. */
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(j, "init_lora_weights");
    if (init && !cJSON_IsNull(init) && !cJSON_IsBool(init) &&
        !(cJSON_IsString(init) && (!strcmp(init->valuestring, "gaussian") || !strcmp(init->valuestring, "eva") ||
                                 !strcmp(init->valuestring, "orthogonal")))) {
        if (cJSON_IsString(init))
            fdpo_error("%s: init_lora_weights \"%.64s\" is not supported (an initialisation that changes the base weights, "
                       "or one fdpo does not know: convert the adapter to plain LoRA with PEFT's save_pretrained("
                       "path_initial_model_for_weight_conversion=...))", path, init->valuestring);
        else
            fdpo_error("%s: init_lora_weights must be true, false or a string", path);
        goto done;
    }
    /* adapters on some layers only: fdpo adapts a module in every layer */
    static const char *const per_layer[] = {"layers_to_transform", "layers_pattern"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, per_layer[i]);
        if (p && !cJSON_IsNull(p) && !(cJSON_IsArray(p) && !p->child)) {
            fdpo_error("%s: %s is not supported (fdpo adapts the target modules of every layer)", path, per_layer[i]); goto done;
        }
    }
    /* PEFT's LoraModel rebuilds model.layers from the base's by this map before it matches the
     * adapter's layer indices (replicate_layers, under `if config.layer_replication:`): the
     * adapter belongs to another stack of layers. Any falsy value (null, [], false, 0, "", {})
     * is a no-op there; every other is refused, the identity map [[0, n_layer]] too (harmless,
     * but not worth telling apart). */
    if (json_truthy(cJSON_GetObjectItemCaseSensitive(j, "layer_replication"))) {
        fdpo_error("%s: layer_replication is not supported (PEFT would rebuild the base's layers by it before applying "
                   "the adapter; fdpo applies it to the base's layers as they are)", path);
        goto done;
    }
    static const char *const patterns[] = {"rank_pattern", "alpha_pattern"};   /* per-module r / alpha */
    for (size_t i = 0; i < 2; i++) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, patterns[i]);
        if (p && !cJSON_IsNull(p) && !(cJSON_IsObject(p) && !p->child)) {
            fdpo_error("%s: %s is not supported (one r and alpha for every module)", path, patterns[i]); goto done;
        }
    }
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(j, "modules_to_save");
    /* "score" on a reward model: its score head, trained in full (fdpo rm --lora-r). PEFT's
     * SEQ_CLS adds ["classifier", "score"] itself, and ignores a name that matches no module
     * ("classifier" here); [] saves nothing. Another module trained in full is refused. */
    int saves_score = 0;
    if (mts && !cJSON_IsNull(mts)) {
        if (!cJSON_IsArray(mts)) { fdpo_error("%s: modules_to_save must be a list of module names", path); goto done; }
        const cJSON *x;
        cJSON_ArrayForEach(x, mts) {
            if (!cJSON_IsString(x) || !*x->valuestring) { fdpo_error("%s: modules_to_save must hold module names", path); goto done; }
            if (!strcmp(x->valuestring, "score")) saves_score = 1;
            else if (names_a_module(m, x->valuestring)) {
                fdpo_error("%s: modules_to_save entry '%s' is not supported (a module trained in full; only \"score\", "
                           "the score head of a reward model)", path, x->valuestring);
                goto done;
            }
        }
        if (saves_score && !m->config.num_labels) {
            fdpo_error("%s: modules_to_save is not supported (only [\"score\"], the score head of a reward model)", path);
            goto done;
        }
    }
    if (m->config.num_labels && !saves_score) {
        fdpo_error("%s: a LoRA adapter of a reward model must train its score head (modules_to_save [\"score\"])", path);
        goto done;
    }
    if (fifo && cJSON_IsBool(fifo) && cJSON_IsTrue(fifo) != (m->config.arch == FDPO_ARCH_GPT2)) {
        fdpo_error("%s: fan_in_fan_out %s does not fit this %s model", path, cJSON_IsTrue(fifo) ? "true" : "false",
                   m->config.arch == FDPO_ARCH_GPT2 ? "gpt2 (Conv1D, true)" : "llama (nn.Linear, false)");
        goto done;
    }
    /* target_modules: a list of names (or "all-linear") -> the comma list of --lora-targets */
    size_t cap = 1;
    if (cJSON_IsArray(tm)) {
        const cJSON *x;
        cJSON_ArrayForEach(x, tm) {
            if (!cJSON_IsString(x) || !*x->valuestring || strchr(x->valuestring, ',')) {
                fdpo_error("%s: target_modules must hold module names", path); goto done;
            }
            if (!strcasecmp(x->valuestring, FDPO_LORA_ALL_LINEAR)) {   /* PEFT expands the string only: a name in a list */
                fdpo_error("%s: target_modules [\"" FDPO_LORA_ALL_LINEAR "\"] names no module (PEFT's shorthand for every "
                           "linear layer is the string \"" FDPO_LORA_ALL_LINEAR "\", not a list entry)", path);
                goto done;
            }
            if (names_a_layer(x->valuestring)) {   /* PEFT matches it as a suffix of one layer's path */
                fdpo_error("%s: target_modules entry '%s' names a module path (a layer of its own): not supported "
                           "(fdpo adapts a module, by name, in every layer)", path, x->valuestring);
                goto done;
            }
            cap += strlen(x->valuestring) + 1;
        }
        targets = fdpo_calloc(cap, 1);
        cJSON_ArrayForEach(x, tm) {
            if (*targets) strcat(targets, ",");
            strcat(targets, x->valuestring);
        }
    } else if (cJSON_IsString(tm) && !strcasecmp(tm->valuestring, FDPO_LORA_ALL_LINEAR)) {   /* PEFT compares .lower() */
        targets = fdpo_strdup(FDPO_LORA_ALL_LINEAR);   /* the targets matcher's, as --lora-targets all-linear */
    } else if (cJSON_IsString(tm)) {   /* PEFT: re.fullmatch over every module's full name */
        fdpo_error("%s: target_modules \"%.64s\" is a regular expression (PEFT matches a string against full module "
                   "names): not supported; give a list of module names", path, tm->valuestring);
        goto done;
    } else {
        fdpo_error("%s: target_modules missing (a list of module names)", path); goto done;
    }
    /* modules left out of the targets (PEFT >= 0.14): one that a target names would be adapted
     * in some layers only, which fdpo does not do (it failed as a missing tensor); others
     * (["lm_head"]) exclude nothing fdpo adapts */
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(j, "exclude_modules");
    if (cJSON_IsString(ex) && *ex->valuestring) {
        fdpo_error("%s: exclude_modules \"%.64s\" is a regular expression: not supported", path, ex->valuestring); goto done;
    }
    if (ex && !cJSON_IsNull(ex) && !cJSON_IsString(ex) && !cJSON_IsArray(ex)) {
        fdpo_error("%s: exclude_modules must be a list of module names", path); goto done;
    }
    *o = (fdpo_lora_opts){(long)r->valuedouble, alpha_value, cJSON_IsNumber(dropout) ? dropout->valuedouble : 0.0, targets};
    if (fdpo_lora_targets_check(targets, m, "target_modules") || fdpo_lora_opts_check(o, m)) {
        fdpo_error_context("%s", path);
        goto done;
    }
    for (const cJSON *e = cJSON_IsArray(ex) ? ex->child : NULL; e; e = e->next) {
        if (!cJSON_IsString(e) || !*e->valuestring) { fdpo_error("%s: exclude_modules must hold module names", path); goto done; }
        if (fdpo_lora_excludes(targets, m, e->valuestring)) {
            fdpo_error("%s: exclude_modules entry '%s' leaves out a module target_modules names: not supported "
                       "(fdpo adapts a target module in every layer)", path, e->valuestring);
            goto done;
        }
    }
    *targets_out = targets;
    targets = NULL;
    rc = 0;
done:
    cJSON_Delete(j);
    free(targets);
    return rc;
}

int fdpo_lora_load_peft(const char *dir, fdpo_gpt2 *m) {
    char *cfg_path = fdpo_path_join(dir, "adapter_config.json");
    char *st_path = fdpo_path_join(dir, "adapter_model.safetensors");
    char *targets = NULL, *text = NULL;
    int rc = -1;
    size_t len;
    fdpo_lora_opts o;
    if (!(text = fdpo_read_file(cfg_path, &len))) goto done;
    if (fdpo_lora_config_parse(cfg_path, text, len, m, &o, &targets)) goto done;
    if (fdpo_lora_attach(m, &o, 0)) { fdpo_error_context("%s", cfg_path); goto done; }
    fdpo_safetensors st;
    if (fdpo_st_open(&st, st_path)) { fdpo_lora_detach(m); goto done; }
    rc = fdpo_st_read_gpt2(&st, &m->lora->view, m->lora->view.params_memory, NULL);
    fdpo_st_close(&st);
    if (rc) fdpo_lora_detach(m);
done:
    free(text);
    free(targets);
    free(cfg_path);
    free(st_path);
    return rc;
}

/* DIR's adapter_config.json saves the score head (modules_to_save ["score"]) */
static int wants_score_head(const char *dir) {
    char *path = fdpo_path_join(dir, "adapter_config.json");
    cJSON *j = read_config(path);
    free(path);
    const cJSON *mts = j ? cJSON_GetObjectItemCaseSensitive(j, "modules_to_save") : NULL;
    int score = 0;
    const cJSON *x;
    if (cJSON_IsArray(mts)) cJSON_ArrayForEach(x, mts) score |= cJSON_IsString(x) && !strcmp(x->valuestring, "score");
    cJSON_Delete(j);
    fdpo_clear_error();
    return score;
}

fdpo_gpt2 *fdpo_lora_load_onto(const char *dir, fdpo_gpt2 *m, const char *base_dir) {
    if (m->config.num_labels == 0 && wants_score_head(dir)) {
        /* a LoRA reward model on a language model (fdpo rm --lora-r): the base gets a score
         * head (pad = the tokenizer's end of text, as fdpo rm pools) that the adapter fills.
         * The base's tokenizer where DIR has none: the one it was read from, not only DIR's
         * base_model_name_or_path (null or a hub id in PEFT's files, refused with --model BASE) */
        fdpo_tokenizer *tok = fdpo_tokenizer_dir_has_files(dir) ? fdpo_tokenizer_load_dir(dir)
                                                                : fdpo_checkpoint_load_tokenizer(base_dir);
        fdpo_gpt2 *rm = tok ? fdpo_gpt2_reward_model_from_lm(m, 0.0, 0, fdpo_tokenizer_eot(tok)) : NULL;
        if (tok) fdpo_tokenizer_free(tok);
        fdpo_gpt2_free(m);
        if (!(m = rm)) { fdpo_error_context("%s: a LoRA reward model", dir); return NULL; }
    }
    if (fdpo_lora_load_peft(dir, m)) { fdpo_gpt2_free(m); return NULL; }
    return m;
}

fdpo_gpt2 *fdpo_lora_load_checkpoint(const char *dir) {
    char *base;
    fdpo_gpt2 *m = NULL;
    if (fdpo_lora_peft_base_read(dir, &base)) return NULL;   /* a config that does not read: its file:line */
    if (!base) {
        fdpo_error("%s holds a LoRA adapter whose adapter_config.json names no base model (base_model_name_or_path): "
                   "fold it into its base with fdpo merge --lora %s --model BASE --out DIR", dir, dir);
        return NULL;
    }
    if (fdpo_lora_is_checkpoint(base)) {   /* one level only: a chain of adapter directories is not followed */
        fdpo_error("%s: base_model_name_or_path %s is itself a LoRA adapter directory; merge it first "
                   "(fdpo merge --lora %s --out DIR)", dir, base, base);
        goto done;
    }
    if (!(m = fdpo_checkpoint_load_model(base))) { fdpo_error_context("%s: base_model_name_or_path %s", dir, base); goto done; }
    if (!(m = fdpo_lora_load_onto(dir, m, base))) goto done;
    m->lora->base_model = base;
    base = NULL;
done:
    free(base);
    return m;
}

int fdpo_checkpoint_load_config(const char *dir, fdpo_gpt2_config *c) {
    char *base = NULL;
    if (fdpo_lora_is_checkpoint(dir) && fdpo_lora_peft_base_read(dir, &base)) return -1;   /* its file:line */
    char *path = fdpo_path_join(base ? base : dir, "config.json");   /* a LoRA checkpoint: its base's shape */
    int rc = fdpo_config_load(path, c);
    free(path);
    free(base);
    return rc;
}
