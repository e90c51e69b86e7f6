// bench/hookfloor OBJECT PROGRAM[,PROGRAM...]: loads the named programs of
// bench/hookfloor.bpf.o, attaches them, prints NAME:ID of each on one line (space-separated)
// and holds them until SIGTERM or SIGINT, then detaches and exits 0.
// Meanwhile it reads the object's ring buffer (floor_events) as the agent reads its own: on a
// wakeup, or at a 10 ms poll timeout. bench/run.py measures the programs with bpf_stats like
// the agent's.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PROGRAMS 8

static int discard_record(void *ctx, void *data, size_t size)
{
	(void)data;
	*(unsigned long long *)ctx += size > 0;
	return 0;
}

// Is `name` one of the comma-separated names in `list`?
static int listed(const char *list, const char *name)
{
	const size_t len = strlen(name);

	for (const char *p = list; *p;) {
		const char *end = strchr(p, ',');
		const size_t n = end ? (size_t)(end - p) : strlen(p);

		if (n == len && strncmp(p, name, n) == 0)
			return 1;
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: hookfloor OBJECT PROGRAM[,PROGRAM...]\n");
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
	struct bpf_program *prog, *wanted[MAX_PROGRAMS];
	int n_wanted = 0, n_asked = 1;
	for (const char *c = argv[2]; *c; c++)
		n_asked += *c == ',';
	bpf_object__for_each_program(prog, obj) {
		const int is_wanted = listed(argv[2], bpf_program__name(prog));
		bpf_program__set_autoload(prog, is_wanted);
		if (is_wanted && n_wanted < MAX_PROGRAMS)
			wanted[n_wanted++] = prog;
	}
	if (n_wanted != n_asked) {
		fprintf(stderr, "hookfloor: %s: not every program is in %s\n", argv[2], argv[1]);
		bpf_object__close(obj);
		return 2;
	}
	int err = bpf_object__load(obj);
	if (err) {
		fprintf(stderr, "hookfloor: cannot load %s: %s\n", argv[2], strerror(-err));
		bpf_object__close(obj);
		return 1;
	}
	struct bpf_link *links[MAX_PROGRAMS] = {0};
	for (int i = 0; i < n_wanted; i++) {
		links[i] = bpf_program__attach(wanted[i]);
		if (!links[i]) {
			fprintf(stderr, "hookfloor: cannot attach %s: %s\n", bpf_program__name(wanted[i]),
				strerror(errno));
			for (int j = 0; j < i; j++)
				bpf_link__destroy(links[j]);
			bpf_object__close(obj);
			return 1;
		}
	}
	for (int i = 0; i < n_wanted; i++) {
		struct bpf_prog_info info;
		__u32 len = sizeof(info);
		memset(&info, 0, sizeof(info));
		bpf_obj_get_info_by_fd(bpf_program__fd(wanted[i]), &info, &len);
		printf("%s%s:%u", i ? " " : "", bpf_program__name(wanted[i]), info.id);
	}
	printf("\n");
	fflush(stdout);

	unsigned long long records = 0;
	struct bpf_map *events = bpf_object__find_map_by_name(obj, "floor_events");
	struct ring_buffer *rb =
		events ? ring_buffer__new(bpf_map__fd(events), discard_record, &records, NULL) : NULL;
	const struct timespec no_wait = {0, 0};
	for (;;) {
		if (rb) {
			ring_buffer__poll(rb, 10);
			ring_buffer__consume(rb); // records submitted without a wakeup
		} else {
			const struct timespec tick = {0, 10 * 1000 * 1000};
			nanosleep(&tick, NULL);
		}
		if (sigtimedwait(&stop, NULL, &no_wait) >= 0)
			break;
	}
	ring_buffer__free(rb);
	for (int i = 0; i < n_wanted; i++)
		bpf_link__destroy(links[i]);
	bpf_object__close(obj);
	fprintf(stderr, "hookfloor: %llu records read\n", records);
	return 0;
}
