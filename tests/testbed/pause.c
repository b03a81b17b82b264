/*
 * The pod sandbox's process for the testbed's real node (containerd's sandbox_image).
 *
 * A pod's network namespace lives as long as this process: it sleeps until SIGTERM or SIGINT
 * and then exits 0, and as PID 1 of a pod that shares its PID namespace it reaps the children
 * re-parented to it. Built static (build.sh) so the image needs no libc: no image can be pulled
 * here, so the usual registry.k8s.io/pause is not available.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    if (sigaction(SIGTERM, &stop, NULL) || sigaction(SIGINT, &stop, NULL) ||
        sigaction(SIGCHLD, &child, NULL)) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
