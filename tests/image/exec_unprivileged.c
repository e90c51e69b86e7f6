/* Models a container runtime that starts the agent with no permitted capabilities and
 * no_new_privs set (tests/image/test_image.py): started as root in the container, it drops to
 * uid/gid 65532 without PR_SET_KEEPCAPS (which clears the permitted set, unlike setpriv, which
 * keeps it), sets no_new_privs and execs argv[1] with the remaining arguments. Static, so it
 * runs in any image.
 *   exec_unprivileged /usr/local/bin/rstwatch agent ...
 */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: exec_unprivileged PROGRAM [ARG...]\n");
        return 2;
    }
    if (setgroups(0, NULL) != 0 || setresgid(65532, 65532, 65532) != 0 || setresuid(65532, 65532, 65532) != 0) {
        perror("exec_unprivileged: switching to 65532");
        return 126;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("exec_unprivileged: PR_SET_NO_NEW_PRIVS");
        return 126;
    }
    execv(argv[1], argv + 1);
    perror("exec_unprivileged: execv");
    return 127;
}
