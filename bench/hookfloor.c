// bench/hookfloor OBJECT PROGRAM: loads one program of bench/hookfloor.bpf.o (floor_empty or
// floor_lookup), attaches it, prints its program id on stdout and holds it until SIGTERM or
// SIGINT, then detaches and exits 0. bench/run.py measures it with bpf_stats like the agent.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <errno.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: hookfloor OBJECT PROGRAM\n");
		return 2;
	}
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigprocmask(SIG_BLOCK, &stop, NULL);

	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		fprintf(stderr, "hookfloor: cannot open %s\n", argv[1]);
		return 1;
	}
	struct bpf_program *prog, *wanted = NULL;
	bpf_object__for_each_program(prog, obj) {
		const int is_wanted = strcmp(bpf_program__name(prog), argv[2]) == 0;
		bpf_program__set_autoload(prog, is_wanted);
		if (is_wanted)
			wanted = prog;
	}
	if (!wanted) {
		fprintf(stderr, "hookfloor: no program %s in %s\n", argv[2], argv[1]);
		bpf_object__close(obj);
		return 2;
	}
	int err = bpf_object__load(obj);
	struct bpf_link *link = err ? NULL : bpf_program__attach(wanted);
	if (!link) {
		fprintf(stderr, "hookfloor: cannot load or attach %s: %s\n", argv[2], strerror(err ? -err : errno));
		bpf_object__close(obj);
		return 1;
	}
	struct bpf_prog_info info;
	__u32 len = sizeof(info);
	memset(&info, 0, sizeof(info));
	bpf_obj_get_info_by_fd(bpf_program__fd(wanted), &info, &len);
	printf("%u\n", info.id);
	fflush(stdout);

	int sig;
	sigwait(&stop, &sig);
	bpf_link__destroy(link);
	bpf_object__close(obj);
	return 0;
}
