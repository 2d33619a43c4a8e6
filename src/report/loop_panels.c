/* The loop's runs in fdpo report (docs/report.md "The loop"): reward-model runs (fdpo rm),
 * online / iterative f-DPO rounds (fdpo online), per-step on-policy runs (fdpo rl, fdpo online
 * --mode step). Their kind comes from the metrics keys each writes (and "rm" from
 * training_state.json); an online run's reference mode from its round directories. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "fdpo/core.h"
#include "report/report_internal.h"

/* ---- discovery (load time) ---- */

/* A round's training_state.json, read as every report JSON is (fdpo_json_parse_value: a key
 * twice or text after the object is refused, not read by cJSON's first copy), or NULL: absent
 * (not an online run) silently, unreadable with a warning; the run then has no online kind. */
static cJSON *read_json(rp_ctx *c, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20)) return NULL;
    size_t len;
    char *text = fdpo_read_file(path, &len);
    cJSON *j = text ? fdpo_json_parse_value(path, 1, text, len) : NULL;
    if (!j) fdpo_rp_warn(c, "%s, not read for the online run's settings", fdpo_last_error());
    free(text);
    return j;
}

static const char *setting_str(const cJSON *state, const char *key) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(state, "settings"), key);
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

/* An online run's directory holds round-K/ f-DPO checkpoints and no settings of its own: the
 * divergence and beta are round 0's; the reference is fixed (online DPO) when round 1's
 * reference is not the model it starts from, and updated every round (iterative DPO) when it is. */
void fdpo_rp_loop_discover(rp_ctx *c, rp_run *r) {
    if (r->kind) return;
    char *p0 = fdpo_path_join(r->dir, "round-0/training_state.json");
    cJSON *s0 = read_json(c, p0);
    free(p0);
    if (!s0) return;
    const char *div = setting_str(s0, "divergence");
    const cJSON *beta = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s0, "settings"), "beta");
    if (div && !r->divergence) r->divergence = fdpo_strdup(div);
    if (cJSON_IsNumber(beta) && !r->has_beta) { r->beta = beta->valuedouble; r->has_beta = 1; }
    char *p1 = fdpo_path_join(r->dir, "round-1/training_state.json");
    cJSON *s1 = read_json(c, p1);
    free(p1);
    const char *ref = setting_str(s1, "ref"), *model = setting_str(s1, "model");
    r->kind = fdpo_strdup(!ref || !model ? "online" : strcmp(ref, model) ? "online (fixed ref)" : "online (iterative)");
    cJSON_Delete(s0);
    cJSON_Delete(s1);
}

/* ---- kinds ---- */

typedef enum { LOOP_NONE, LOOP_RM, LOOP_ROUNDS, LOOP_STEPS } loop_kind;

/* A row's number under key, or under the name an older fdpo logged it by: the online rounds'
 * margin was "pairs/reward_gap" before it took TRL OnlineDPOTrainer's "objective/scores_margin". */
static int row_num(const cJSON *row, const char *key, double *v) {
    if (fdpo_rp_get_num(row, key, v)) return 1;
    return !strcmp(key, "objective/scores_margin") && fdpo_rp_get_num(row, "pairs/reward_gap", v);
}

static int has_key(const rp_run *r, const char *key) {
    const cJSON *row;
    cJSON_ArrayForEach(row, r->rows) { double v; if (row_num(row, key, &v)) return 1; }
    return 0;
}

/* The keys decide, so that a state file whose kind names the trainer underneath (an online
 * step run's "dpo", say) does not hide a loop run; "rm" is also taken from the state. */
static loop_kind kind_of(const rp_run *r) {
    if (has_key(r, "round") && has_key(r, "objective/scores")) return LOOP_ROUNDS;
    if (has_key(r, "step") && has_key(r, "objective/rlhf_reward")) return LOOP_STEPS;
    if ((r->kind && !strcmp(r->kind, "rm")) || (has_key(r, "accuracy") && has_key(r, "mean_reward"))) return LOOP_RM;
    return LOOP_NONE;
}

/* what the runs table and the legends call a run */
static const char *kind_name(const rp_run *r, loop_kind k) {
    switch (k) {
    case LOOP_ROUNDS: return r->kind && !strncmp(r->kind, "online", 6) ? r->kind : "online";
    case LOOP_STEPS: return has_key(r, "rewards/chosen") ? "online (per step)" : "rl";
    case LOOP_RM: return "rm";
    default: return r->kind;
    }
}

/* One series per run of kind k logging ykey (x = xkey), dashed for dkey (its held-out twin, or
 * the quantity dsuffix names). Online legends say how the reference was updated. */
static void loop_panel(rp_ctx *c, rp_charts *ch, loop_kind k, const char *title, const char *explain, const char *xkey,
                       const char *ykey, const char *dkey, const char *dsuffix, const char *ylabel) {
    cJSON *series = cJSON_CreateArray();
    size_t maxp = c->opts->max_points ? c->opts->max_points : 2000;
    for (int pass = 0; pass < (dkey ? 2 : 1); pass++)
        for (size_t i = 0; i < c->n_runs; i++) {
            const rp_run *r = &c->runs[i];
            const char *key = pass ? dkey : ykey;
            if (kind_of(r) != k || !has_key(r, key)) continue;
            char label[800];
            const char *kn = k == LOOP_RM ? NULL : kind_name(r, k);
            if (kn && !strncmp(kn, "online", 6) && kn[6]) kn += 7;   /* "(fixed ref)", "(iterative)", "(per step)" */
            else kn = NULL;
            snprintf(label, sizeof label, "%s%s%s%s", r->label, kn ? " " : "", kn ? kn : "", pass ? dsuffix : "");
            cJSON *s = fdpo_rp_series_new(series, label, fdpo_rp_run_color(c, i), 1, pass);
            size_t n = 0, j = 0;
            const cJSON *row;
            cJSON_ArrayForEach(row, r->rows) { double v, x; n += row_num(row, key, &v) && fdpo_rp_get_num(row, xkey, &x); }
            fdpo_rp_thin thin = {n, maxp, 0};
            cJSON_ArrayForEach(row, r->rows) {
                double v, x;
                if (!row_num(row, key, &v) || !fdpo_rp_get_num(row, xkey, &x)) continue;
                if (fdpo_rp_thin_keep(&thin, j)) fdpo_rp_series_add(s, x, v, NULL);
                j++;
            }
        }
    fdpo_rp_chart_emit(ch, series, title, explain, xkey, ylabel, 0);
}

void fdpo_rp_loop_section(rp_ctx *c, rp_charts *ch, rp_buf *b) {
    size_t n[4] = {0};
    for (size_t i = 0; i < c->n_runs; i++) n[kind_of(&c->runs[i])]++;
    if (!n[LOOP_RM] && !n[LOOP_ROUNDS] && !n[LOOP_STEPS]) return;
    fdpo_rp_puts(b, "<h2 id=\"loop\">The loop: reward models, online rounds, RL steps</h2>\n<p class=\"explain\">"
                    "Runs of <code>fdpo rm</code>, <code>fdpo online</code> and <code>fdpo rl</code>, recognised from "
                    "their <code>training_state.json</code>, their round directories or the metrics they log. The "
                    "names are TRL's (RewardTrainer, OnlineDPOTrainer, RLOOTrainer).</p>\n<div class=\"grid\">\n");
    if (n[LOOP_RM]) {
        loop_panel(c, ch, LOOP_RM, "Reward model: pair accuracy", "accuracy: the fraction of training pairs the "
                   "reward model ranks correctly (a tie counts 1/2); dashed: eval_accuracy on the held-out pairs.",
                   "step", "accuracy", "eval_accuracy", " (held out)", "accuracy");
        loop_panel(c, ch, LOOP_RM, "Reward model: loss", "loss: \xe2\x88\x92log \xcf\x83(r_chosen \xe2\x88\x92 "
                   "r_rejected \xe2\x88\x92 margin) (+ the centering term); dashed: eval_loss.", "step", "loss",
                   "eval_loss", " (held out)", "loss");
        loop_panel(c, ch, LOOP_RM, "Reward model: margin", "margin: mean r_chosen \xe2\x88\x92 r_rejected; dashed: "
                   "eval_margin.", "step", "margin", "eval_margin", " (held out)", "reward margin");
    }
    if (n[LOOP_ROUNDS]) {
        static const char ref_note[] = " The legend says whether the reference stayed the initial model (fixed ref, "
                                       "online DPO) or was the previous round's policy (iterative DPO).";
        char ex[512];
        snprintf(ex, sizeof ex, "objective/scores: mean reward of the round's samples, drawn before its training.%s", ref_note);
        loop_panel(c, ch, LOOP_ROUNDS, "Online rounds: reward", ex, "round", "objective/scores", NULL, NULL, "mean reward");
        snprintf(ex, sizeof ex, "objective/kl: mean sequence log-ratio to the round's reference (0 in every round of "
                 "an iterative run, whose reference is the policy that samples).%s", ref_note);
        loop_panel(c, ch, LOOP_ROUNDS, "Online rounds: KL to the reference", ex, "round", "objective/kl", NULL, NULL, "KL (nats)");
        loop_panel(c, ch, LOOP_ROUNDS, "Online rounds: entropy", "objective/entropy: mean \xe2\x88\x92\xce\xa3 log "
                   "\xcf\x80 of the samples. A fall at equal reward is the policy collapsing onto fewer answers.",
                   "round", "objective/entropy", NULL, NULL, "entropy (nats)");
        loop_panel(c, ch, LOOP_ROUNDS, "Online rounds: pairs", "pairs: preference pairs built from the round's "
                   "samples (prompts whose samples all tie give none).", "round", "pairs", NULL, NULL, "pairs");
        loop_panel(c, ch, LOOP_ROUNDS, "Online rounds: scores margin of the pairs", "objective/scores_margin: mean "
                   "reward(chosen) \xe2\x88\x92 reward(rejected) over the pairs (runs of an older fdpo: pairs/reward_gap). "
                   "It shrinks as the samples of a prompt agree.", "round", "objective/scores_margin", NULL, NULL,
                   "scores margin");
    }
    if (n[LOOP_STEPS]) {
        loop_panel(c, ch, LOOP_STEPS, "RL steps: objective", "objective/rlhf_reward = objective/scores \xe2\x88\x92 "
                   "\xce\xb2\xc2\xb7" "D_f (the sampled estimate of the regularised objective); dashed: objective/scores, "
                   "the reward alone.", "step", "objective/rlhf_reward", "objective/scores", " objective/scores", "reward");
        loop_panel(c, ch, LOOP_STEPS, "RL steps: KL to the reference", "objective/kl: mean \xce\xa3_t log \xcf\x80 "
                   "\xe2\x88\x92 log \xcf\x80_ref over each sample's tokens.", "step", "objective/kl", NULL, NULL, "KL (nats)");
        loop_panel(c, ch, LOOP_STEPS, "RL steps: entropy", "objective/entropy: mean \xe2\x88\x92\xce\xa3 log \xcf\x80 "
                   "of the samples.", "step", "objective/entropy", NULL, NULL, "entropy (nats)");
        loop_panel(c, ch, LOOP_STEPS, "RL steps: loss", "The policy-gradient loss of the step (online per-step runs: "
                   "the f-DPO loss).", "step", "loss", NULL, NULL, "loss");
    }
    fdpo_rp_puts(b, "</div>\n");
}

const char *fdpo_rp_loop_kind_name(const rp_run *r) { return kind_name(r, kind_of(r)); }
