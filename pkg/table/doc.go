// Package table reads the conntrack table as the kernel shows it over
// ctnetlink, per network namespace: which namespaces have conntrack in use
// (Namespaces), their count, max and drop counters (Namespace.Stats), and a
// streamed dump of their entries (Namespace.Dump, Namespace.DumpBySource)
// that holds one netlink buffer at a time, whatever the table's size.
//
// Each namespace is reached through a ctnetlink socket created inside it
// (setns(2) on a locked OS thread, undone before the thread is released).
// Everything needs CAP_SYS_ADMIN (setns, reading other processes'
// namespaces) and CAP_NET_ADMIN (ctnetlink).
package table
