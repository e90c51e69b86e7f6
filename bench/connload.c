// connload: C-speed TCP connection load for the rstwatch benchmark (bench/run.py).
// Acts as both ends on loopback inside one network namespace (run it with
// `ip netns exec NS`), so every connection is seen by rstwatch twice (client and server).
//
//   connload storm --port P --rate CONN_PER_S --seconds S
//       connect + accept + SO_LINGER 0 close: every connection ends in one RST sent
//       (client) and one RST received (server), i.e. 2 rstwatch records per connection.
//   connload churn --port P --rate CONN_PER_S --count N --seconds MAX [--rst-every K]
//       one request/response per connection, then the server closes and the client
//       follows (every K-th connection the client aborts with RST instead).
//   connload hold --port P --ports K --count N
//       opens N connections spread over K listening ports (P..P+K-1), one byte each way,
//       prints {"ready":N}, holds them until stdin is closed or a line arrives, closes all.
//   connload pool --port P --ports K --count N --rate CONN_PER_S --seconds MAX
//       a pool of N idle connections whose peer dies (a reset storm): opens N connections
//       over K ports, prints {"ready":N}, waits for a line on stdin (the caller starts its
//       measurement), then aborts them one after the other (client SO_LINGER 0: one RST
//       sent, one received) paced at CONN_PER_S, for at most MAX seconds. Aborting a
//       connection costs far less than making one, so one thread can reset at rates that
//       `storm` (which makes every connection it resets) cannot reach on a small machine.
//       Opening is bounded by --open-seconds (default 300; for hold: --seconds).
//
// Every mode is bounded (count and/or seconds). Progress: one JSON line per second on
// stdout ({"t":s,"connections":n}); a final {"done":...} summary line. Exit 0 on success.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char* what) {
	fprintf(stderr, "connload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int listener(const char* host, int port, int backlog) {
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0) die("socket");
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, host, &a.sin_addr);
	if (bind(l, (struct sockaddr*)&a, sizeof a) < 0) die("bind");
	if (listen(l, backlog) < 0) die("listen");
	return l;
}

// Connects to host:port and accepts the other end from l. Returns 0, or -1 (errno set).
static int pair(const char* host, int port, int l, int* c_out, int* s_out) {
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0) return -1;
	int one = 1;
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, host, &a.sin_addr);
	if (connect(c, (struct sockaddr*)&a, sizeof a) < 0) {
		int e = errno;
		close(c);
		errno = e;
		return -1;
	}
	int s = accept(l, NULL, NULL);
	if (s < 0) {
		int e = errno;
		close(c);
		errno = e;
		return -1;
	}
	*c_out = c;
	*s_out = s;
	return 0;
}

static void linger0(int fd) {
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

// Raises the soft limit to `want` (or the hard limit without CAP_SYS_RESOURCE); exits when
// that is not enough: the caller (bench/run.py) then spreads the load over more processes.
static void raise_nofile(long want) {
	struct rlimit r;
	if (getrlimit(RLIMIT_NOFILE, &r) < 0) die("getrlimit");
	struct rlimit w = {.rlim_cur = (rlim_t)want, .rlim_max = (rlim_t)want};
	if (r.rlim_max != RLIM_INFINITY && (rlim_t)want > r.rlim_max && setrlimit(RLIMIT_NOFILE, &w) == 0)
		return;
	if (r.rlim_max != RLIM_INFINITY && (rlim_t)want > r.rlim_max) {
		fprintf(stderr, "connload: need %ld file descriptors, hard limit is %ld\n", want,
			(long)r.rlim_max);
		exit(3);
	}
	r.rlim_cur = (rlim_t)want;
	if (setrlimit(RLIMIT_NOFILE, &r) < 0) die("setrlimit(RLIMIT_NOFILE)");
}

int main(int argc, char** argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: connload storm|churn|hold|pool [--host H] [--port P] [--ports K] "
				"[--rate R] [--seconds S] [--open-seconds S] [--count N] [--rst-every K]\n");
		return 2;
	}
	const char* mode = argv[1];
	const char* host = "127.0.0.1";
	int port = 18080, ports = 1, rst_every = 0;
	double rate = 0, seconds = 10, open_seconds = -1;
	long count = 0;
	for (int i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "--host")) host = v;
		else if (!strcmp(k, "--port")) port = atoi(v);
		else if (!strcmp(k, "--ports")) ports = atoi(v);
		else if (!strcmp(k, "--rate")) rate = atof(v);
		else if (!strcmp(k, "--seconds")) seconds = atof(v);
		else if (!strcmp(k, "--open-seconds")) open_seconds = atof(v);
		else if (!strcmp(k, "--count")) count = atol(v);
		else if (!strcmp(k, "--rst-every")) rst_every = atoi(v);
		else {
			fprintf(stderr, "connload: unknown option %s\n", k);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	const int pool = !strcmp(mode, "pool");
	if (!strcmp(mode, "hold") || pool) {
		if (count <= 0 || ports <= 0) return 2;
		raise_nofile(2 * count + ports + 64);
		int* ls = calloc(ports, sizeof(int));
		int* fds = calloc(2 * count, sizeof(int));
		if (!ls || !fds) die("calloc");
		for (int k = 0; k < ports; k++) ls[k] = listener(host, port + k, 4096);
		double t0 = now_s(), next = t0 + 1;
		char b = 'x';
		long n = 0, errors = 0;
		if (open_seconds < 0) open_seconds = pool ? 300 : seconds;
		while (n < count && now_s() - t0 < open_seconds) {
			int c, s;
			if (pair(host, port + (int)(n % ports), ls[n % ports], &c, &s) < 0) {
				if (++errors > 1000) die("connect/accept (too many errors)");
				continue;
			}
			if (!pool && (write(c, &b, 1) != 1 || read(s, &b, 1) != 1 || write(s, &b, 1) != 1 ||
				      read(c, &b, 1) != 1))
				die("exchange");
			fds[2 * n] = c;
			fds[2 * n + 1] = s;
			n++;
			if (now_s() >= next) {
				printf("{\"t\":%.3f,\"connections\":%ld}\n", now_s() - t0, n);
				next += 1;
			}
		}
		printf("{\"ready\":%ld,\"seconds\":%.3f,\"errors\":%ld}\n", n, now_s() - t0, errors);
		char line[64];
		struct pollfd p = {.fd = 0, .events = POLLIN};
		poll(&p, 1, -1); // the caller bounds this (it closes stdin or kills us)
		(void)!read(0, line, sizeof line);
		double t1 = now_s();
		if (pool) {
			long resets = 0;
			double deadline = t1 + seconds, next_report = t1 + 1;
			for (long i = 0; i < n; i++) {
				double t = now_s();
				if (t >= deadline) break;
				if (t >= next_report) {
					printf("{\"t\":%.3f,\"resets\":%ld}\n", t - t1, resets);
					next_report += 1;
				}
				// Paced in small bursts (2 ms): many of these run at once, each at a
				// fraction of the rate, and a sleep per connection would cost more than
				// the reset.
				double due = t1 + i / rate;
				if (rate > 0 && due > t + 0.002) {
					double d = due - t;
					struct timespec ts = {.tv_sec = (time_t)d, .tv_nsec = (long)((d - (time_t)d) * 1e9)};
					nanosleep(&ts, NULL);
				}
				linger0(fds[2 * i]);
				close(fds[2 * i]); // RST sent by the client, received by the server socket
				close(fds[2 * i + 1]);
				fds[2 * i] = fds[2 * i + 1] = -1;
				resets++;
			}
			double el = now_s() - t1;
			for (long i = 0; i < 2 * n; i++)
				if (fds[i] >= 0) close(fds[i]); // left over at the deadline: closed quietly
			printf("{\"done\":\"pool\",\"connections\":%ld,\"resets\":%ld,\"seconds\":%.3f,"
			       "\"rate\":%.1f,\"errors\":%ld}\n",
			       n, resets, el, el > 0 ? resets / el : 0.0, errors);
			return 0;
		}
		for (long i = 0; i < 2 * n; i++) close(fds[i]);
		printf("{\"done\":\"hold\",\"connections\":%ld,\"close_seconds\":%.3f}\n", n, now_s() - t1);
		return 0;
	}

	int storm = !strcmp(mode, "storm");
	if (!storm && strcmp(mode, "churn")) {
		fprintf(stderr, "connload: unknown mode %s\n", mode);
		return 2;
	}
	raise_nofile(4096);
	int l = listener(host, port, 4096);
	double t0 = now_s(), next_report = t0 + 1, deadline = t0 + seconds;
	long n = 0, errors = 0, resets = 0;
	char req[64], resp[128];
	memset(req, 'q', sizeof req);
	memset(resp, 'r', sizeof resp);
	for (;;) {
		if (count > 0 && n >= count) break;
		double t = now_s();
		if (t >= deadline) break;
		if (t >= next_report) {
			printf("{\"t\":%.3f,\"connections\":%ld}\n", t - t0, n);
			next_report += 1;
		}
		if (rate > 0) {
			double due = t0 + n / rate;
			if (due > t + 0.0005) {
				double d = due - t;
				struct timespec ts = {.tv_sec = (time_t)d, .tv_nsec = (long)((d - (time_t)d) * 1e9)};
				nanosleep(&ts, NULL);
				continue;
			}
		}
		int c, s;
		if (pair(host, port, l, &c, &s) < 0) {
			if (++errors > 10000) die("connect/accept (too many errors)");
			continue;
		}
		if (storm) {
			linger0(c);
			close(c); // RST sent by the client, received by the server socket
			close(s);
			resets++;
		} else {
			if (write(c, req, sizeof req) != (ssize_t)sizeof req) die("write");
			ssize_t got = 0;
			while (got < (ssize_t)sizeof req) {
				ssize_t r = read(s, req, sizeof req - got);
				if (r <= 0) die("server read");
				got += r;
			}
			if (write(s, resp, sizeof resp) != (ssize_t)sizeof resp) die("server write");
			got = 0;
			while (got < (ssize_t)sizeof resp) {
				ssize_t r = read(c, resp, sizeof resp - got);
				if (r <= 0) die("client read");
				got += r;
			}
			if (rst_every > 0 && (n % rst_every) == 0) {
				linger0(c); // the client aborts: RST
				close(c);
				close(s);
				resets++;
			} else {
				close(s); // the server closes first (its end keeps the TIME_WAIT)
				char eof;
				(void)!read(c, &eof, 1);
				close(c);
			}
		}
		n++;
	}
	double el = now_s() - t0;
	printf("{\"done\":\"%s\",\"connections\":%ld,\"resets\":%ld,\"seconds\":%.3f,\"rate\":%.1f,"
	       "\"errors\":%ld}\n",
	       mode, n, resets, el, el > 0 ? n / el : 0.0, errors);
	close(l);
	return 0;
}
