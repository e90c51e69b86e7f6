/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Definitions shared by the BPF programs (bpf/rstwatch.bpf.c) and the agent.
 * One record layout flows through the single ring buffer; every record carries
 * a snapshot of the kernel's per-socket summary so the agent can classify a
 * failure from the decisive record alone, even if earlier records were lost.
 */
#ifndef RSTWATCH_H
#define RSTWATCH_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define RW_COMM_LEN 16
#define RW_ADDR_LEN 16 /* IPv4 is stored v4-mapped (::ffff:a.b.c.d) */

/* What made the kernel emit a record. */
enum rw_record_type {
	RW_REC_IDLE_WRITE = 1, /* first write after >= idle threshold, ESTABLISHED */
	RW_REC_CLOSE_WAIT_WRITE = 2, /* write after the peer's FIN */
	RW_REC_PEER_FIN = 3, /* ESTABLISHED -> CLOSE_WAIT on an armed or idle socket */
	RW_REC_OWN_CLOSE = 4, /* the application closed an armed or idle socket */
	RW_REC_CLOSED = 5, /* an armed socket reached CLOSE */
	RW_REC_RST_RECEIVED = 6, /* tcp:tcp_receive_reset, every one */
	RW_REC_RST_SENT = 7, /* tcp:tcp_send_reset, every one */
	RW_REC_UNREAD_AT_DESTROY = 8, /* a socket our application closed is destroyed with data it never read */
	RW_REC_TYPE_MAX = 9,
};

/* Which end of the connection this socket is. */
enum rw_role {
	RW_ROLE_UNKNOWN = 0, /* connection predates rstwatch: no history */
	RW_ROLE_CLIENT = 1, /* the side that called connect() */
	RW_ROLE_SERVER = 2, /* the side that accepted */
};

/* Bits of rw_conn_snapshot.flags. */
enum rw_conn_flags {
	RW_F_ARMED = 1 << 0, /* a write after idle or after FIN awaits its answer */
	RW_F_WRITE_IN_CLOSE_WAIT = 1 << 1, /* the armed write happened after the peer's FIN */
	RW_F_PEER_FIN = 1 << 2, /* the peer's FIN was processed */
	RW_F_APP_CLOSED = 1 << 3, /* our application closed (FIN_WAIT1 / LAST_ACK / abort) */
	RW_F_FROM_TIMEWAIT = 1 << 4, /* the record's socket was a timewait socket */
	RW_F_NO_SOCKET = 1 << 5, /* RST sent with no socket: addresses from the packet */
	RW_F_REPLY_RST = 1 << 6, /* RST sent in reply to a received segment, not an active reset */
	RW_F_RST_RECEIVED = 1 << 7, /* a RST was received on this socket */
	RW_F_ARMED_INFERRED = 1 << 8, /* the waiting request was found from the socket's counters at the
				       * peer's FIN or RST (written within the idle threshold: no write record) */
	RW_F_CLOSED_WHILE_IDLE = 1 << 9, /* our application closed it at least RW_IDLE_CLOSE_FLOOR_MS after its last data */
	RW_F_TLS_ALERT_SENT = 1 << 10, /* server: our application wrote one TLS alert record after idle or after the
					* peer's FIN (its close_notify): the connection speaks TLS and is being torn down */
};

/* Payload sizes of one protected TLS alert record (close_notify) as a TLS stack sends it after
 * the other side's close: 23 (TLS 1.2 ChaCha20-Poly1305), 24 (TLS 1.3 AEAD) up to 29 (TLS 1.3
 * with record padding), 31 (TLS 1.2 AES-GCM, explicit nonce). Any request protected by TLS is
 * larger than this (record overhead alone is 22 bytes, and no request fits in 9). */
#define RW_TLS_ALERT_MIN_BYTES 23
#define RW_TLS_ALERT_MAX_BYTES 31

/* A close this long after the connection's last data is an idle close (keepalive timeout), not
 * the close right after a response (Connection: close). */
#define RW_IDLE_CLOSE_FLOOR_MS 10

/* TCP states as the kernel numbers them (include/net/tcp_states.h, stable ABI). */
enum rw_tcp_state {
	RW_TCP_ESTABLISHED = 1,
	RW_TCP_SYN_SENT = 2,
	RW_TCP_SYN_RECV = 3,
	RW_TCP_FIN_WAIT1 = 4,
	RW_TCP_FIN_WAIT2 = 5,
	RW_TCP_TIME_WAIT = 6,
	RW_TCP_CLOSE = 7,
	RW_TCP_CLOSE_WAIT = 8,
	RW_TCP_LAST_ACK = 9,
	RW_TCP_LISTEN = 10,
	RW_TCP_CLOSING = 11,
	RW_TCP_NEW_SYN_RECV = 12,
};

/* Write hook attach modes, in order of preference. */
enum rw_write_mode {
	RW_WRITE_TP_BTF = 0, /* tp_btf/tcp_sendmsg_locked (Linux >= 6.16) */
	RW_WRITE_FENTRY = 1, /* fentry/tcp_sendmsg */
	RW_WRITE_KPROBE = 2, /* kprobe/tcp_sendmsg */
	RW_WRITE_NONE = 3,
};

/* The kernel's per-socket summary, kept in a map and copied into records. */
struct rw_conn_snapshot {
	__u64 start_ns; /* when the connection was first seen; with the socket pointer it names the connection */
	__u64 armed_write_ns; /* time of the armed write */
	__u64 armed_idle_ns; /* idle age of the connection at the armed write */
	__u64 armed_bytes_received; /* data bytes received (FIN not counted) at the armed write */
	__u64 peer_fin_ns; /* when the peer's FIN was processed, 0 if not */
	__u64 app_close_ns; /* when our application closed, 0 if not */
	__u32 armed_write_seq; /* tcp_sock.write_seq before the armed write */
	__u32 requests; /* in records: client data segments sent (retransmissions not counted),
			 * server data segments received, i.e. requests while each fits one segment */
	__u32 writer_pid; /* client: process of the armed write, else the one that connected (never softirq) */
	__u32 writer_tid;
	char writer_comm[RW_COMM_LEN];
	__u8 role; /* enum rw_role */
	__u8 armed_state; /* socket state at the armed write */
	__u8 idle_closed; /* our application closed it after it idled >= the close threshold */
	__u8 armed_tls; /* the armed write was one TLS alert record (its content type: 0x15, or 0x17 for
			 * TLS 1.3's protected form of that size), e.g. close_notify; 0 otherwise */
	__u16 flags; /* enum rw_conn_flags */
	__u16 reserved; /* zero; keeps the layout free of implicit padding */
};

struct rw_record {
	__u64 ts_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 sock_id; /* the socket pointer: with conn.start_ns names the connection */
	__u64 idle_ns; /* idle age of the connection when the record was made */
	__u64 bytes_received; /* data bytes received (the peer's FIN not counted); full sockets only */
	__u64 bytes_acked;
	__u32 snd_una;
	__u32 unread_bytes; /* rcv_nxt - copied_seq: data the application never read (the peer's FIN not counted) */
	__u32 netns; /* network namespace inode of the socket */
	__u32 pid; /* current task: meaningful only for write records */
	__u32 tid;
	__u32 rst_reason; /* raw enum sk_rst_reason value, RW_RST_REASON_NONE if the kernel gives none */
	__s32 send_after_recv; /* full sockets: tcp_sock.lsndtime - icsk_ack.lrcvtime in jiffies; > 0 when our
				* last data went out after the last data came in (a request awaits its answer) */
	__u32 unacked_bytes; /* full sockets: write_seq - snd_una, written by the application and not acknowledged */
	__u32 segment_bytes; /* RST sent in reply to a segment: that segment's payload bytes (FIN, SYN not counted) */
	__u32 reserved; /* zero; keeps the layout free of implicit padding */
	char comm[RW_COMM_LEN];
	__u8 saddr[RW_ADDR_LEN]; /* local address of the observing socket */
	__u8 daddr[RW_ADDR_LEN]; /* remote address */
	__u16 sport; /* local port, host order */
	__u16 dport; /* remote port, host order */
	__u8 type; /* enum rw_record_type */
	__u8 family; /* AF_INET or AF_INET6 of the socket */
	__u8 state; /* socket state when the record was made */
	__u8 old_state; /* for state-change records */
	struct rw_conn_snapshot conn;
};

#define RW_RST_REASON_NONE 0xffffffffu

/* Indexes of the per-CPU counter array. */
enum rw_counter {
	RW_CNT_LOST = 0, /* ring buffer full: record dropped */
	RW_CNT_TRACK_FAILED = 1, /* per-socket map update failed */
	RW_CNT_TRACK_ADDED = 2, /* connections that got per-socket state */
	RW_CNT_TRACK_REMOVED = 3, /* per-socket state forgotten at teardown (LRU evictions not counted) */
	RW_CNT_MAX = 4,
};

#endif /* RSTWATCH_H */
