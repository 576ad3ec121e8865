/*
 * Two threads that deadlock on two pthread mutexes: locker-a takes lock_a and then wants
 * lock_b, locker-b takes lock_b and then wants lock_a. Once each holds its first lock both
 * go for their second one, and the program prints `locker-a TID locker-b TID` (flushed):
 * from then on both are blocked, forever, in the other's lock.
 *
 * glibc's default mutexes wait with a plain futex wait; the owner is in the mutex's
 * `__owner`.
 *
 * `deadlock pi` makes no deadlock: with priority-inheritance mutexes the kernel finds the
 * cycle when the second thread asks for its lock (FUTEX_LOCK_PI fails with EDEADLK) and
 * glibc then parks that thread forever on a word of its own stack. Instead, `holder` takes
 * a priority-inheritance mutex and sleeps, and `waiter` is blocked in FUTEX_LOCK_PI on it
 * (whose futex word holds the owner's thread id); it prints `holder TID waiter TID`.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t lock_a, lock_b;
static pthread_barrier_t both_hold_one;

struct locker {
    const char *name;
    pthread_mutex_t *first, *second;
    pid_t tid;
};

static void *lock_both(void *arg) {
    struct locker *l = arg;
    pthread_setname_np(pthread_self(), l->name);
    l->tid = gettid();
    pthread_mutex_lock(l->first);
    pthread_barrier_wait(&both_hold_one);
    pthread_mutex_lock(l->second);
    return NULL;
}

/* `holder` of a PI mutex: takes it, lets the waiter go for it, and sleeps forever. */
static void *hold(void *arg) {
    struct locker *l = arg;
    pthread_setname_np(pthread_self(), l->name);
    l->tid = gettid();
    pthread_mutex_lock(l->first);
    pthread_barrier_wait(&both_hold_one);
    for (;;)
        pause();
    return NULL;
}

/* `waiter` for a PI mutex: goes for it once the holder has it. */
static void *wait_for(void *arg) {
    struct locker *l = arg;
    pthread_setname_np(pthread_self(), l->name);
    l->tid = gettid();
    pthread_barrier_wait(&both_hold_one);
    pthread_mutex_lock(l->first);
    return NULL;
}

/* A PI mutex held by a sleeping thread and another thread blocked on it. */
static int pi_chain(void) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&lock_a, &attr);
    pthread_barrier_init(&both_hold_one, NULL, 3);
    struct locker h = {"holder", &lock_a, NULL, 0};
    struct locker w = {"waiter", &lock_a, NULL, 0};
    pthread_t th, tw;
    pthread_create(&th, NULL, hold, &h);
    pthread_create(&tw, NULL, wait_for, &w);
    pthread_barrier_wait(&both_hold_one);
    printf("holder %d waiter %d\n", h.tid, w.tid);
    fflush(stdout);
    pthread_join(tw, NULL);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "pi") == 0)
        return pi_chain();
    pthread_mutex_init(&lock_a, NULL);
    pthread_mutex_init(&lock_b, NULL);
    /* The main thread is the third party: it learns both tids once both hold a lock. */
    pthread_barrier_init(&both_hold_one, NULL, 3);
    struct locker a = {"locker-a", &lock_a, &lock_b, 0};
    struct locker b = {"locker-b", &lock_b, &lock_a, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, lock_both, &a);
    pthread_create(&tb, NULL, lock_both, &b);
    pthread_barrier_wait(&both_hold_one);
    printf("locker-a %d locker-b %d\n", a.tid, b.tid);
    fflush(stdout);
    pthread_join(ta, NULL);
    return 0;
}
