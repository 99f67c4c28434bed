// Package table is the table's state beside the path of events: the
// conntrack table as the kernel shows it over ctnetlink, per network
// namespace, for status (pkg/status), top-sources' namespace lines and
// entries held (pkg/top) and serve's table metrics: which namespaces have conntrack in use
// (Namespaces), their count, max and drop counters (Namespace.Stats), and a
// streamed dump of their entries (Namespace.Dump, Namespace.DumpBySource)
// that holds one netlink buffer at a time, whatever the table's size.
//
// Each namespace is reached through a ctnetlink socket created inside it
// (setns(2) on a locked OS thread, undone before the thread is released).
// Everything needs CAP_SYS_ADMIN (setns, reading other processes'
// namespaces) and CAP_NET_ADMIN (ctnetlink).
package table
