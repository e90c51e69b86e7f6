// rwscenario: the socket scenarios of tests/lib/scenarios.py as one small static program, for
// kernels booted in qemu (tests/kernels) where there is no Python. Both ends run on loopback:
// the server is a forked child named "rwsrv", the client the parent named "rwcli" (the writer
// rstwatch must name).
//
//   rwscenario SCENARIO [-6] [--idle SECONDS] [--delay SECONDS]
//     write_after_fin  the server closes an idle connection (FIN); the client, in CLOSE_WAIT,
//                      writes --delay (default 0.3 s) later; the server's closed socket answers
//                      RST -> client write_after_fin, server data_after_close. With --delay 0
//                      the write carries the delayed ACK of the FIN (the nginx timing): the
//                      server's socket is still a full FIN_WAIT1 socket, not a TIME_WAIT one
//     idle_close_rst   the client writes after --idle (default 1.5 s) and the server closes with
//                      the request unread -> client idle_close_race, server abort_on_close
//     healthy          keepalive traffic with idle gaps above the threshold, answered; a client
//                      close; a server idle close the client honours -> no incident
//   -6: IPv6 (::1) instead of IPv4 (127.0.0.1).
//
// Prints one JSON line with what the host-side test needs to build the expected incidents:
// {"scenario", "family", "ok", "pid", "comm", "conns": [{"client": {"ip","port"}, "server": ...,
// "exchanges"}], "idle_ms" (client-measured: last response byte to the failing write),
// "client_result" (what the client's read after that write returned), "gaps_ms" (healthy),
// "delay_ms" and "server_state" (write_after_fin: --delay, and the state of the server's closed
// socket from /proc/net/tcp just before the client's write: FIN_WAIT1 while the FIN is not
// acknowledged yet, else TIME_WAIT; the kernel answers the write from a different socket kind)}.
// Exit 0 when the sockets behaved as the scenario requires, else 1 with "ok": false and "error".
// Every blocking step has a timeout; the server child is ended by its PID on failure.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define THRESHOLD_S 0.5   // the --idle-threshold the scenarios are written for
#define REQ 100
#define RESP 200
#define STEP_TIMEOUT_S 10.0

static int family = AF_INET;
static const char* scenario;
static pid_t server_pid = -1;
static int done_pipe[2] = {-1, -1};  // client -> server: "the client has closed"
static char error_text[512];

static double now_s(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_s(double s) {
	struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

static const char* errno_name(int e) {
	switch (e) {
		case ECONNRESET: return "ECONNRESET";
		case EPIPE: return "EPIPE";
		case ETIMEDOUT: return "ETIMEDOUT";
		case ECONNREFUSED: return "ECONNREFUSED";
		case EAGAIN: return "EAGAIN";
		default: return strerror(e);
	}
}

// Records the first failure; the scenario functions return -1 after calling it.
static int fail(const char* fmt, ...) {
	if (!error_text[0]) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(error_text, sizeof error_text, fmt, ap);
		va_end(ap);
	}
	return -1;
}

// The server child reports on stderr and through its exit status.
static void server_die(const char* fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "rwscenario server: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	_exit(1);
}

static int wait_fd(int fd, short events, double timeout_s) {
	struct pollfd p = {.fd = fd, .events = events};
	int r;
	do {
		r = poll(&p, 1, (int)(timeout_s * 1000));
	} while (r < 0 && errno == EINTR);
	return r;  // 1 ready, 0 timeout, -1 error
}

// Reads exactly n bytes: n, 0 at EOF before n, -1 with errno (ETIMEDOUT after timeout_s).
static ssize_t recv_exact(int fd, size_t n, double timeout_s) {
	char buf[4096];
	size_t got = 0;
	double deadline = now_s() + timeout_s;
	while (got < n) {
		double left = deadline - now_s();
		if (left <= 0 || wait_fd(fd, POLLIN, left) == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		size_t want = n - got < sizeof buf ? n - got : sizeof buf;
		ssize_t r = recv(fd, buf, want, 0);
		if (r < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		if (r == 0) return 0;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int send_all(int fd, size_t n) {
	char buf[4096];
	memset(buf, 'q', sizeof buf);
	size_t sent = 0;
	while (sent < n) {
		size_t chunk = n - sent < sizeof buf ? n - sent : sizeof buf;
		ssize_t r = send(fd, buf, chunk, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		sent += (size_t)r;
	}
	return 0;
}

static int tcp_state(int fd) {
	struct tcp_info info;
	socklen_t len = sizeof info;
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -1;
	return info.tcpi_state;
}

static const char* tcp_state_name(int state) {
	static const char* names[] = {"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	                              "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"};
	return state > 0 && state < (int)(sizeof names / sizeof names[0]) ? names[state] : "?";
}

// State of the socket local_port -> remote_port in /proc/net/tcp{,6} (orphaned and TIME_WAIT
// sockets included), "none" if there is none.
static const char* proc_tcp_state(int local_port, int remote_port) {
	FILE* f = fopen(family == AF_INET6 ? "/proc/net/tcp6" : "/proc/net/tcp", "r");
	if (!f) return "unreadable";
	char line[512];
	const char* found = "none";
	while (fgets(line, sizeof line, f)) {
		unsigned lport, rport, state;
		if (sscanf(line, " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x", &lport, &rport, &state) == 3 &&
		    (int)lport == local_port && (int)rport == remote_port) {
			found = tcp_state_name((int)state);
			break;
		}
	}
	fclose(f);
	return found;
}

// ---------------------------------------------------------------- endpoints and JSON

struct endpoint {
	char ip[INET6_ADDRSTRLEN];
	int port;
};

struct conn_info {
	struct endpoint client, server;
	int exchanges;
};

static void endpoint_of(const struct sockaddr_storage* ss, struct endpoint* ep) {
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6* a = (const struct sockaddr_in6*)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, ep->ip, sizeof ep->ip);
		ep->port = ntohs(a->sin6_port);
	} else {
		const struct sockaddr_in* a = (const struct sockaddr_in*)ss;
		inet_ntop(AF_INET, &a->sin_addr, ep->ip, sizeof ep->ip);
		ep->port = ntohs(a->sin_port);
	}
}

static void loopback(struct sockaddr_storage* ss, socklen_t* len, int port) {
	memset(ss, 0, sizeof *ss);
	if (family == AF_INET6) {
		struct sockaddr_in6* a = (struct sockaddr_in6*)ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		a->sin6_port = htons(port);
		*len = sizeof *a;
	} else {
		struct sockaddr_in* a = (struct sockaddr_in*)ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a->sin_port = htons(port);
		*len = sizeof *a;
	}
}

// ---------------------------------------------------------------- processes

// Listener on loopback port 0, then the server child (which runs serve(listener)).
static int start_server(void (*serve)(int listener), int* port) {
	int l = socket(family, SOCK_STREAM, 0);
	if (l < 0) return fail("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_storage ss;
	socklen_t len;
	loopback(&ss, &len, 0);
	if (bind(l, (struct sockaddr*)&ss, len) != 0 || listen(l, 16) != 0)
		return fail("bind/listen: %s", strerror(errno));
	len = sizeof ss;
	getsockname(l, (struct sockaddr*)&ss, &len);
	struct endpoint ep;
	endpoint_of(&ss, &ep);
	*port = ep.port;
	if (pipe(done_pipe) != 0) return fail("pipe: %s", strerror(errno));
	fflush(stdout);
	server_pid = fork();
	if (server_pid < 0) return fail("fork: %s", strerror(errno));
	if (server_pid == 0) {
		prctl(PR_SET_NAME, "rwsrv", 0, 0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		close(done_pipe[1]);
		serve(l);
		close(l);
		_exit(0);
	}
	close(done_pipe[0]);
	close(l);
	return 0;
}

// Tells the server the client is done, waits for it (bounded): 0 when it exited 0.
static int finish_server(void) {
	if (server_pid <= 0) return 0;
	if (done_pipe[1] >= 0) {
		(void)!write(done_pipe[1], "d", 1);
		close(done_pipe[1]);
		done_pipe[1] = -1;
	}
	double deadline = now_s() + STEP_TIMEOUT_S;
	int status = 0;
	for (;;) {
		pid_t r = waitpid(server_pid, &status, WNOHANG);
		if (r == server_pid) break;
		if (r < 0 || now_s() > deadline) {
			kill(server_pid, SIGKILL);
			waitpid(server_pid, &status, 0);
			server_pid = -1;
			return fail("server did not finish within %.0f s", STEP_TIMEOUT_S);
		}
		sleep_s(0.01);
	}
	server_pid = -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return fail("server failed (status %d)", status);
	return 0;
}

// Server side: blocks until the client says it is done (or 30 s).
static void server_wait_done(void) {
	char c;
	wait_fd(done_pipe[0], POLLIN, 30.0);
	(void)!read(done_pipe[0], &c, 1);
}

static int server_accept(int l) {
	if (wait_fd(l, POLLIN, STEP_TIMEOUT_S) != 1) server_die("no connection to accept");
	int c = accept(l, NULL, NULL);
	if (c < 0) server_die("accept: %s", strerror(errno));
	return c;
}

// Serves count exchanges (REQ in, resp out); stops early at EOF. Returns how many.
static int server_serve(int c, int count, size_t resp) {
	int done = 0;
	while (done < count) {
		ssize_t r = recv_exact(c, REQ, 30.0);
		if (r == 0) break;
		if (r < 0) server_die("recv: %s", errno_name(errno));
		if (send_all(c, resp) != 0) server_die("send: %s", errno_name(errno));
		++done;
	}
	return done;
}

static int client_connect(int port, struct conn_info* info) {
	int c = socket(family, SOCK_STREAM, 0);
	if (c < 0) return fail("socket: %s", strerror(errno));
	struct sockaddr_storage ss;
	socklen_t len;
	loopback(&ss, &len, port);
	if (connect(c, (struct sockaddr*)&ss, len) != 0) return fail("connect: %s", strerror(errno));
	len = sizeof ss;
	getsockname(c, (struct sockaddr*)&ss, &len);
	endpoint_of(&ss, &info->client);
	len = sizeof ss;
	getpeername(c, (struct sockaddr*)&ss, &len);
	endpoint_of(&ss, &info->server);
	info->exchanges = 0;
	return c;
}

// One request/response; *last_rx = when the response was complete.
static int client_exchange(int c, struct conn_info* info, size_t resp, double* last_rx) {
	if (send_all(c, REQ) != 0) return fail("client send: %s", errno_name(errno));
	ssize_t r = recv_exact(c, resp, STEP_TIMEOUT_S);
	if (r <= 0) return fail("client recv: %s", r == 0 ? "EOF" : errno_name(errno));
	*last_rx = now_s();
	info->exchanges++;
	return 0;
}

// What a read returns after the failing write: "EOF", "data", or an errno name.
static const char* client_read_result(int c, double timeout_s) {
	char buf[512];
	if (wait_fd(c, POLLIN, timeout_s) == 0) return "ETIMEDOUT";
	ssize_t r = recv(c, buf, sizeof buf, 0);
	if (r < 0) return errno_name(errno);
	return r == 0 ? "EOF" : "data";
}

// ---------------------------------------------------------------- scenarios

static double idle_s = 1.5;
static double idle_ms = -1;
static const char* client_result = "";
static const char* server_state = "";
static struct conn_info conns[4];
static int n_conns;
static double gaps_ms[8];
static int n_gaps;

#define SERVER_IDLE_S (THRESHOLD_S + 0.1)
static double client_delay_s = 0.3;

static void serve_write_after_fin(int l) {
	int c = server_accept(l);
	if (server_serve(c, 1, RESP) != 1) server_die("no first request");
	sleep_s(SERVER_IDLE_S);
	close(c);  // FIN; the orphaned socket answers the client's late write with RST
	server_wait_done();
}

static int write_after_fin(void) {
	int port;
	if (start_server(serve_write_after_fin, &port) != 0) return -1;
	struct conn_info* info = &conns[n_conns++];
	int c = client_connect(port, info);
	if (c < 0) return -1;
	double last_rx;
	if (client_exchange(c, info, RESP, &last_rx) != 0) return -1;
	double deadline = now_s() + 5.0;
	while (tcp_state(c) != TCP_CLOSE_WAIT) {
		if (now_s() > deadline) return fail("client never reached CLOSE_WAIT (state %d)", tcp_state(c));
		sleep_s(0.002);
	}
	if (client_delay_s > 0) sleep_s(client_delay_s);
	server_state = proc_tcp_state(info->server.port, info->client.port);
	double t_write = now_s();
	if (send_all(c, REQ) != 0) return fail("write in CLOSE_WAIT failed: %s", errno_name(errno));
	idle_ms = (t_write - last_rx) * 1000.0;
	info->exchanges++;
	// The FIN is queued before the RST: the first read may report EOF.
	client_result = client_read_result(c, 3.0);
	if (strcmp(client_result, "EOF") != 0 && strcmp(client_result, "ECONNRESET") != 0)
		return fail("client read after the write: %s, expected EOF or ECONNRESET", client_result);
	close(c);
	return finish_server();
}

static void serve_idle_close_rst(int l) {
	int c = server_accept(l);
	if (server_serve(c, 1, RESP) != 1) server_die("no first request");
	if (wait_fd(c, POLLIN, 30.0) != 1) server_die("the racing request never came");
	int unread = 0;
	ioctl(c, FIONREAD, &unread);
	if (unread <= 0) server_die("no unread request (FIONREAD %d)", unread);
	close(c);  // unread data: the kernel sends RST (TCP_ABORT_ON_CLOSE)
	server_wait_done();
}

static int idle_close_rst(void) {
	int port;
	if (start_server(serve_idle_close_rst, &port) != 0) return -1;
	struct conn_info* info = &conns[n_conns++];
	int c = client_connect(port, info);
	if (c < 0) return -1;
	double last_rx;
	if (client_exchange(c, info, RESP, &last_rx) != 0) return -1;
	sleep_s(idle_s);
	double t_write = now_s();
	if (send_all(c, REQ) != 0) return fail("racing write failed: %s", errno_name(errno));
	idle_ms = (t_write - last_rx) * 1000.0;
	info->exchanges++;
	client_result = client_read_result(c, 5.0);
	if (strcmp(client_result, "ECONNRESET") != 0)
		return fail("client read after the racing write: %s, expected ECONNRESET", client_result);
	close(c);
	return finish_server();
}

#define HEALTHY_EXCHANGES 300
#define HEALTHY_GAP_S (THRESHOLD_S + 0.3)
#define HONOURED_EXCHANGES 10

static void serve_healthy(int l) {
	// Connection 1: served until the client closes (EOF), then closed.
	int c = server_accept(l);
	if (server_serve(c, HEALTHY_EXCHANGES + 1, 700) != HEALTHY_EXCHANGES) server_die("healthy: count");
	close(c);
	// Connection 2: the server closes it after an idle period; the client honours the FIN.
	c = server_accept(l);
	if (server_serve(c, HONOURED_EXCHANGES, 100) != HONOURED_EXCHANGES) server_die("honoured: count");
	sleep_s(SERVER_IDLE_S);
	close(c);
	server_wait_done();
}

static int healthy(void) {
	int port;
	if (start_server(serve_healthy, &port) != 0) return -1;
	struct conn_info* info = &conns[n_conns++];
	int c = client_connect(port, info);
	if (c < 0) return -1;
	double last_rx = now_s();
	for (int i = 0; i < HEALTHY_EXCHANGES; ++i) {
		if (i == HEALTHY_EXCHANGES / 3 || i == 2 * HEALTHY_EXCHANGES / 3) {
			sleep_s(HEALTHY_GAP_S);
			gaps_ms[n_gaps++] = (now_s() - last_rx) * 1000.0;
		}
		if (client_exchange(c, info, 700, &last_rx) != 0) return -1;
	}
	close(c);  // normal keepalive teardown: client first
	info = &conns[n_conns++];
	c = client_connect(port, info);
	if (c < 0) return -1;
	for (int i = 0; i < HONOURED_EXCHANGES; ++i)
		if (client_exchange(c, info, 100, &last_rx) != 0) return -1;
	client_result = client_read_result(c, 5.0);
	if (strcmp(client_result, "EOF") != 0)
		return fail("client read on the connection the server idle-closed: %s, expected EOF", client_result);
	close(c);
	return finish_server();
}

// ---------------------------------------------------------------- main

static void print_endpoint(const char* key, const struct endpoint* ep) {
	printf("\"%s\":{\"ip\":\"%s\",\"port\":%d}", key, ep->ip, ep->port);
}

static void print_result(int ok) {
	char comm[17] = "";
	prctl(PR_GET_NAME, comm, 0, 0, 0);
	printf("{\"scenario\":\"%s\",\"family\":%d,\"ok\":%s,\"pid\":%d,\"comm\":\"%s\",\"conns\":[", scenario,
	       family == AF_INET6 ? 6 : 4, ok ? "true" : "false", (int)getpid(), comm);
	for (int i = 0; i < n_conns; ++i) {
		printf("%s{", i ? "," : "");
		print_endpoint("client", &conns[i].client);
		printf(",");
		print_endpoint("server", &conns[i].server);
		printf(",\"exchanges\":%d}", conns[i].exchanges);
	}
	printf("]");
	if (idle_ms >= 0) printf(",\"idle_ms\":%.1f", idle_ms);
	if (strcmp(scenario, "write_after_fin") == 0)
		printf(",\"delay_ms\":%.1f,\"server_state\":\"%s\"", client_delay_s * 1000.0, server_state);
	printf(",\"client_result\":\"%s\",\"gaps_ms\":[", client_result);
	for (int i = 0; i < n_gaps; ++i) printf("%s%.1f", i ? "," : "", gaps_ms[i]);
	printf("]");
	if (!ok) printf(",\"error\":\"%s\"", error_text);  // our own text: no quotes in it
	printf("}\n");
	fflush(stdout);
}

static int usage(void) {
	fprintf(stderr, "usage: rwscenario write_after_fin|idle_close_rst|healthy [-6] [--idle SECONDS] "
	        "[--delay SECONDS]\n");
	return 2;
}

int main(int argc, char** argv) {
	if (argc < 2) return usage();
	scenario = argv[1];
	for (int i = 2; i < argc; ++i) {
		if (strcmp(argv[i], "-6") == 0) {
			family = AF_INET6;
		} else if (strcmp(argv[i], "--idle") == 0 && i + 1 < argc) {
			idle_s = atof(argv[++i]);
		} else if (strcmp(argv[i], "--delay") == 0 && i + 1 < argc) {
			client_delay_s = atof(argv[++i]);
		} else {
			return usage();
		}
	}
	int (*run)(void) = NULL;
	if (strcmp(scenario, "write_after_fin") == 0) run = write_after_fin;
	if (strcmp(scenario, "idle_close_rst") == 0) run = idle_close_rst;
	if (strcmp(scenario, "healthy") == 0) run = healthy;
	if (!run) return usage();
	prctl(PR_SET_NAME, "rwcli", 0, 0, 0);
	signal(SIGPIPE, SIG_IGN);
	int ok = run() == 0;
	if (!ok && server_pid > 0) {
		kill(server_pid, SIGKILL);
		waitpid(server_pid, NULL, 0);
	}
	print_result(ok);
	return ok ? 0 : 1;
}
