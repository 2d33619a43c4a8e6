/* SIGINT and SIGTERM in the fdpo command: no thread that computes ever runs a handler.
 *
 * Why: Debian's oneDNN 2.6 f32 GEMM kernels point rsp at a heap workspace while they run
 * (oneDNN issue #4845, fixed in 3.11). A signal handled on a thread inside such a kernel has
 * its frame written below that rsp, into the heap: `fdpo sacpo` interrupted with SIGINT
 * aborted about one time in ten with "corrupted size vs. prev_size" a step later. So main()
 * blocks both signals before any thread exists (every thread inherits the mask: OpenMP's,
 * MPI's, the online writer) and one thread takes them with sigwait and does what the
 * command asked for, in ordinary thread context. */
#ifndef FDPO_CLI_INTERRUPTS_H
#define FDPO_CLI_INTERRUPTS_H

typedef enum {
    INTERRUPT_END,            /* end fdpo as the signal's default action would (the start) */
    INTERRUPT_STOP_TRAINER,   /* fdpo_trainer_request_stop(): the run saves after the current
                                 step and ends "interrupted ..."; a second signal ends fdpo
                                 (a repeat of the same one within 1 s is the same
                                 request delivered twice: ignored, interrupts.c) */
    INTERRUPT_KILL_REWARD,    /* while a reward program runs, kill its process group
                                 (fdpo_reward_kill_all): the command ends "interrupted";
                                 at any other time, end fdpo */
} interrupt_action;

/* First thing in main (after the OpenMP re-exec), before any thread exists. */
void interrupts_start(void);
void interrupts_set(interrupt_action action);
/* The line fdpo prints on stderr when a signal ends it (what is kept, how to go on): asked of
 * note at that moment, so it can say what is there then; NULL, or a NULL line: none. */
typedef const char *(*interrupt_end_note)(void);
void interrupts_set_end_note(interrupt_end_note note);
#endif
