// include/rstwatch.h is compiled twice: into the BPF object (clang -target bpf, vmlinux.h's
// types) and into the agent. This test reads the BPF object's BTF and checks that every record
// struct has, field by field, the offsets and sizes the agent was compiled with.
#include <gtest/gtest.h>

#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "rstwatch.h"

namespace rstwatch {
namespace {

struct FieldLayout {
    size_t offset;
    size_t size;
};
using StructLayout = std::map<std::string, FieldLayout>;

#define RW_FIELD(type, member) \
    { #member, FieldLayout{offsetof(type, member), sizeof(static_cast<type*>(nullptr)->member)} }

// Every field of the shared records, as the agent sees them. A field added to rstwatch.h and
// missing here fails the member count below.
const StructLayout kRecordLayout = {
    RW_FIELD(rw_record, ts_ns),         RW_FIELD(rw_record, sock_id),       RW_FIELD(rw_record, idle_ns),
    RW_FIELD(rw_record, bytes_received), RW_FIELD(rw_record, bytes_acked),  RW_FIELD(rw_record, snd_una),
    RW_FIELD(rw_record, unread_bytes),  RW_FIELD(rw_record, netns),         RW_FIELD(rw_record, pid),
    RW_FIELD(rw_record, tid),           RW_FIELD(rw_record, rst_reason),    RW_FIELD(rw_record, send_after_recv),
    RW_FIELD(rw_record, unacked_bytes), RW_FIELD(rw_record, segment_bytes), RW_FIELD(rw_record, reserved),
    RW_FIELD(rw_record, comm),          RW_FIELD(rw_record, saddr),         RW_FIELD(rw_record, daddr),
    RW_FIELD(rw_record, sport),         RW_FIELD(rw_record, dport),         RW_FIELD(rw_record, type),
    RW_FIELD(rw_record, family),        RW_FIELD(rw_record, state),         RW_FIELD(rw_record, old_state),
    RW_FIELD(rw_record, conn),
};
const StructLayout kSnapshotLayout = {
    RW_FIELD(rw_conn_snapshot, start_ns),        RW_FIELD(rw_conn_snapshot, armed_write_ns),
    RW_FIELD(rw_conn_snapshot, armed_idle_ns),   RW_FIELD(rw_conn_snapshot, armed_bytes_received),
    RW_FIELD(rw_conn_snapshot, peer_fin_ns),     RW_FIELD(rw_conn_snapshot, app_close_ns),
    RW_FIELD(rw_conn_snapshot, armed_write_seq), RW_FIELD(rw_conn_snapshot, requests),
    RW_FIELD(rw_conn_snapshot, writer_pid),      RW_FIELD(rw_conn_snapshot, writer_tid),
    RW_FIELD(rw_conn_snapshot, writer_comm),     RW_FIELD(rw_conn_snapshot, role),
    RW_FIELD(rw_conn_snapshot, armed_state),     RW_FIELD(rw_conn_snapshot, idle_closed),
    RW_FIELD(rw_conn_snapshot, armed_tls),       RW_FIELD(rw_conn_snapshot, flags),
    RW_FIELD(rw_conn_snapshot, reserved),
};

struct BtfDeleter {
    void operator()(btf* b) const { btf__free(b); }
};

// The BPF object's view of `name`: field -> offset and size.
StructLayout btf_layout(const btf* b, const char* name, size_t* struct_size) {
    const int id = btf__find_by_name_kind(b, name, BTF_KIND_STRUCT);
    EXPECT_GT(id, 0) << "struct " << name << " is not in the BPF object's BTF";
    StructLayout layout;
    if (id <= 0) return layout;
    const btf_type* t = btf__type_by_id(b, id);
    *struct_size = t->size;
    const btf_member* m = btf_members(t);
    for (int i = 0; i < btf_vlen(t); ++i, ++m) {
        EXPECT_EQ(btf_member_bitfield_size(t, i), 0u) << name << " has a bitfield";
        layout[btf__name_by_offset(b, m->name_off)] =
            FieldLayout{btf_member_bit_offset(t, i) / 8, static_cast<size_t>(btf__resolve_size(b, m->type))};
    }
    return layout;
}

void expect_same(const StructLayout& agent, const StructLayout& bpf, size_t agent_size, size_t bpf_size,
                 const char* name) {
    EXPECT_EQ(agent_size, bpf_size) << "sizeof(struct " << name << ")";
    EXPECT_EQ(agent.size(), bpf.size()) << "fields of struct " << name;
    for (const auto& [field, want] : bpf) {
        auto it = agent.find(field);
        ASSERT_NE(it, agent.end()) << name << "." << field << " is in the BPF object, not in the agent's table";
        EXPECT_EQ(it->second.offset, want.offset) << name << "." << field << " offset";
        EXPECT_EQ(it->second.size, want.size) << name << "." << field << " size";
    }
}

TEST(RecordLayout, BpfObjectMatchesTheAgentsHeader) {
    std::unique_ptr<btf, BtfDeleter> b(btf__parse_elf(RSTWATCH_BPF_OBJECT, nullptr));
    ASSERT_TRUE(b) << "cannot read BTF from " << RSTWATCH_BPF_OBJECT;

    size_t bpf_size = 0;
    StructLayout record = btf_layout(b.get(), "rw_record", &bpf_size);
    expect_same(kRecordLayout, record, sizeof(rw_record), bpf_size, "rw_record");

    StructLayout snapshot = btf_layout(b.get(), "rw_conn_snapshot", &bpf_size);
    expect_same(kSnapshotLayout, snapshot, sizeof(rw_conn_snapshot), bpf_size, "rw_conn_snapshot");
}

}  // namespace
}  // namespace rstwatch
