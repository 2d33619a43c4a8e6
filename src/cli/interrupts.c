#include "interrupts.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "fdpo/eval.h"
#include "fdpo/trainer.h"

static atomic_int g_action = INTERRUPT_END;
static sigset_t g_stop_signals;
static _Atomic(interrupt_end_note) g_end_note;

/* The signal's default action, which ends the process: this thread alone unblocks it. A
 * reward program still running is killed first (its process group is not fdpo's, so it would
 * outlive fdpo), and the command's note, if any, says what is kept. */
static void end_by(int sig) {
    fdpo_reward_kill_all();
    const interrupt_end_note note_of = atomic_load(&g_end_note);
    const char *note = note_of ? note_of() : NULL;
    /* straight to fd 2, and only if it takes the line now: stdio's lock may be held by a
     * thread blocked writing to a full stderr pipe, and a signal must still end fdpo */
    struct pollfd err = {.fd = 2, .events = POLLOUT};
    if (note && poll(&err, 1, 0) == 1 && (err.revents & POLLOUT)) {
        char line[PATH_MAX + 512];
        int n = snprintf(line, sizeof line, "%s\n", note);
        if (n > 0) (void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    }
    fdpo_locks_release_unused();   /* what exit would do: an output file's FILE.lock went on after the signal */
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    signal(sig, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    raise(sig);
    _exit(128 + sig); /* not reached */
}

/* A repeat of the signal last acted on that comes within this many seconds of it is the same
 * request delivered twice, not a second one: GNU timeout(1) sends its SIGTERM to fdpo and then
 * to fdpo's process group, and a scheduler or wrapper that signals both the process and its
 * group does the same, microseconds apart. Taken as a second request it killed the run before
 * its checkpoint (exit 143, every step since the last save lost). One second is far above the
 * gap of such a double delivery even on a loaded machine, and short enough that a deliberate
 * second Ctrl-C (given when the run has not stopped yet) still ends fdpo. */
#define DUPLICATE_SIGNAL_WINDOW_S 1.0

static double monotonic_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *wait_for_signals(void *unused) {
    (void)unused;
    int last_sig = 0;
    double last_at = 0;
    for (;;) {
        int sig = 0;
        if (sigwait(&g_stop_signals, &sig)) continue;
        const double now = monotonic_seconds();
        if (sig == last_sig && now - last_at < DUPLICATE_SIGNAL_WINDOW_S) continue;
        last_sig = sig;
        last_at = now;
        switch (atomic_load(&g_action)) {
        case INTERRUPT_STOP_TRAINER:
            fdpo_trainer_request_stop();
            atomic_store(&g_action, INTERRUPT_END);
            break;
        case INTERRUPT_KILL_REWARD:
            if (!fdpo_reward_kill_all()) end_by(sig);
            break;
        case INTERRUPT_END:
            end_by(sig);
        }
    }
    return NULL;
}

void interrupts_start(void) {
    sigemptyset(&g_stop_signals);
    sigaddset(&g_stop_signals, SIGINT);
    sigaddset(&g_stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &g_stop_signals, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    /* without the thread the signals stay blocked: fdpo can then only be ended by SIGKILL,
     * so fall back to the default actions */
    if (pthread_create(&t, &attr, wait_for_signals, NULL)) pthread_sigmask(SIG_UNBLOCK, &g_stop_signals, NULL);
    pthread_attr_destroy(&attr);
}

void interrupts_set(interrupt_action action) { atomic_store(&g_action, action); }

void interrupts_set_end_note(interrupt_end_note note) { atomic_store(&g_end_note, note); }
