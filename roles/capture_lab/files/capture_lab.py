# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""capture_lab: show, with real connections, where traffic goes once capture rules are in place.

Subcommands:

  serve   Listen on TCP and/or UDP ports inside a named network namespace, in the background,
          optionally as another uid/gid (a stand-in proxy runs as the proxy uid, like Envoy and
          the DNS proxy do), and answer every connection or datagram with one JSON line that
          says who answered, on which local address, what the original destination was before
          NAT, and (for a client in the same namespace) the uid that owns the client socket.
          ``--tproxy`` ports are listened on as a TPROXY-mode proxy does (IP_TRANSPARENT /
          IPV6_TRANSPARENT): TPROXY does not rewrite the destination, so the connection's own
          local address is its original destination.
  probe   Connect (TCP) or send a datagram (UDP) from inside a namespace, as a given uid/gid,
          and print the answer (or the error) as one JSON line.
  stop    Stop a server started by ``serve``, by its pidfile.
  matrix  Run a list of probes from a JSON file and print a table of expected vs actual.

Safety: probes only ever go to 127.0.0.0/8, ::1, ::6, 198.18.0.0/15 or 2001:db8::/32. Any other
destination is refused (exit status 2) before a packet is sent.

Standard library only; Python 3.8 or later; Linux only; root to enter namespaces.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import time

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

# getsockopt() options that return the destination a connection had before NAT rewrote it.
SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>, level SOL_IP, returns a struct sockaddr_in
IP6T_SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv6/ip6_tables.h>, level SOL_IPV6, a struct sockaddr_in6
SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28

# A listener the TPROXY target may hand connections addressed elsewhere (<linux/in.h>, <linux/in6.h>).
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)

# Ancillary data that tells a UDP server which local address a datagram was sent to.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
IN6_PKTINFO = struct.Struct("=16si")  # ipi6_addr, ipi6_ifindex

# The only destinations a probe may ever send to.
ALLOWED_NETWORKS = tuple(
    ipaddress.ip_network(net) for net in ("127.0.0.0/8", "::1/128", "::6/128", "198.18.0.0/15", "2001:db8::/32")
)

# How the matrix names an answer from the stand-in proxy, by the local port it arrived on.
DEFAULT_PROXY_LABEL = "proxy"
DEFAULT_CAPTURE_PORTS = {"proxy-outbound": 15001, "proxy-inbound": 15006, "proxy-dns": 15053}

MAX_REPLY = 65536
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

log = logging.getLogger("capture_lab")


class UsageError(Exception):
    """The command line or the spec is wrong, or asks for something unsafe (exit status 2)."""


class LabError(Exception):
    """Something on the machine is not as needed: no such namespace, a port in use... (exit status 1)."""


# --------------------------------------------------------------------------------------------
# Addresses and ports (pure)
# --------------------------------------------------------------------------------------------


def parse_port(text):
    """Parse one TCP/UDP port number, 1..65535."""
    text = str(text).strip()
    if not (text.isascii() and text.isdigit()):
        raise UsageError("%r is not a port number" % text)
    port = int(text)
    if not 1 <= port <= 65535:
        raise UsageError("port %d is out of range (1-65535)" % port)
    return port


def parse_ports(text):
    """Parse a comma-separated port list (``"8080,15001"``); empty items and repeats are dropped."""
    ports = []
    for item in (text or "").split(","):
        if item.strip():
            port = parse_port(item)
            if port not in ports:
                ports.append(port)
    return ports


def parse_endpoint(text):
    """Parse ``ADDR:PORT`` or ``[IPV6ADDR]:PORT`` into ``(ipaddress object, port)``.

    Host names are not accepted: a probe never resolves names, so it cannot be sent somewhere
    a resolver decides.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise UsageError("%r: write an IPv6 endpoint as [ADDRESS]:PORT" % text)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise UsageError("%r: expected ADDRESS:PORT" % text)
        if ":" in host:
            raise UsageError("%r: write an IPv6 endpoint as [ADDRESS]:PORT" % text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError("%r is not an IP address (names are not resolved)" % host) from None
    if text.startswith("[") and address.version != 6:
        raise UsageError("%r: brackets are for IPv6 addresses only" % text)
    return address, parse_port(port)


def format_endpoint(host, port):
    """``("198.18.0.2", 80)`` -> ``198.18.0.2:80``; ``("2001:db8::2", 80)`` -> ``[2001:db8::2]:80``."""
    host = str(host)
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def check_allowed(address):
    """Refuse any destination outside the lab ranges, so a probe can never reach a real network."""
    if not any(net.version == address.version and address in net for net in ALLOWED_NETWORKS):
        raise UsageError(
            "refusing to send traffic to %s: probes may only go to %s"
            % (address, ", ".join(str(net) for net in ALLOWED_NETWORKS))
        )
    return address


def decode_sockaddr(raw):
    """Decode a ``struct sockaddr_in`` or ``struct sockaddr_in6`` into ``(host, port)``.

    ``sa_family`` is in host byte order, the port and the address in network byte order.
    """
    if len(raw) < 2:
        raise ValueError("%d bytes is too short for a socket address" % len(raw))
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= 8:
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise ValueError("not a sockaddr_in or sockaddr_in6 (family %d, %d bytes)" % (family, len(raw)))


def decode_proc_net_address(text, byteorder=sys.byteorder):
    """Decode an address of ``/proc/net/tcp`` or ``tcp6`` (``0100007F:1F90``) into ``(host, port)``.

    The kernel prints the address as 32-bit words in host byte order and the port in hex.
    """
    hex_address, sep, hex_port = text.partition(":")
    if not sep:
        raise ValueError("no port in %r" % text)
    raw = bytes.fromhex(hex_address)
    if len(raw) not in (4, 16):
        raise ValueError("%r is neither an IPv4 nor an IPv6 address" % hex_address)
    words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
    if byteorder == "little":
        words = [word[::-1] for word in words]
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, b"".join(words)), int(hex_port, 16)


def find_socket_uid(proc_net_text, host, port):
    """Owner uid of the established TCP socket whose local address is ``host:port``, or None.

    ``proc_net_text`` is the content of ``/proc/net/tcp`` or ``/proc/net/tcp6`` of a namespace.
    """
    for line in proc_net_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != "01":  # 01 = TCP_ESTABLISHED
            continue
        try:
            if decode_proc_net_address(fields[1]) == (host, port):
                return int(fields[7])
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------------------------
# Namespaces and processes
# --------------------------------------------------------------------------------------------


# The same ten lines as plugins/module_utils/_system/namespace.py, on purpose: this file is copied to
# targets and run on its own (ansible-test's needs/file, molecule, the demo), and it is the oracle the
# tests check the engine against, so it must not share the engine's code.
def _setns(fd):
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter_netns(name):
    """Move this process into the named network namespace; ``""`` stays where it is."""
    if not name:
        return
    if "/" in name or name in (".", ".."):
        raise UsageError("%r is not a namespace name" % name)
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError("no network namespace named %r (%s does not exist)" % (name, path)) from None
    except OSError as exc:
        raise LabError("cannot open %s: %s" % (path, exc.strerror)) from None
    try:
        _setns(fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise LabError("%s is not a network namespace" % path) from None
        raise LabError("cannot enter network namespace %r: %s" % (name, exc.strerror)) from None
    finally:
        os.close(fd)


def process_cmdline(pid):
    """The argument vector of process ``pid``, or None when there is no such process."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]


def process_gone(pid):
    """True when ``pid`` has exited (no such process, or a zombie waiting to be reaped)."""
    try:
        with open("/proc/%d/stat" % pid, "r") as handle:
            stat = handle.read()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] in ([], ["Z"], ["X"])


def is_lab_server(cmdline):
    """True when an argument vector is that of a ``capture_lab ... serve`` process."""
    for index, arg in enumerate(cmdline or []):
        if os.path.basename(arg).startswith("capture_lab"):
            return "serve" in cmdline[index + 1:index + 2]
    return False


def read_pidfile(path):
    """The pid written in ``path``; None when the file does not exist."""
    try:
        with open(path, "r") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabError("cannot read pidfile %s: %s" % (path, exc.strerror)) from None
    if not (text.isascii() and text.isdigit()) or int(text) < 2:
        raise LabError("pidfile %s does not hold a pid: %r" % (path, text[:40]))
    return int(text)


def running_server(pidfile):
    """Pid of the live capture_lab server recorded in ``pidfile``, or None."""
    pid = read_pidfile(pidfile)
    if pid is None or process_gone(pid) or not is_lab_server(process_cmdline(pid)):
        return None
    return pid


def remove_pidfile(path, only_pid=None):
    """Remove ``path``; with ``only_pid``, only while it still names that pid."""
    try:
        if only_pid is not None and read_pidfile(path) != only_pid:
            return
        os.unlink(path)
    except (OSError, LabError):
        pass


# --------------------------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by the signal handler to leave the server loop."""


def _raise_stop(signum, _frame):
    raise _Stop(signal.Signals(signum).name)


def open_server_socket(family, kind, port, transparent=False):
    """A socket bound to the wildcard address of ``family``; None when the namespace has no IPv6.

    ``transparent`` (TCP): IP_TRANSPARENT / IPV6_TRANSPARENT, which needs CAP_NET_ADMIN; without it the
    kernel's TPROXY target finds no socket to hand a connection to, and drops it.
    """
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        if family == socket.AF_INET6 and exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return None
        raise
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            if family == socket.AF_INET6:
                sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
        if kind == socket.SOCK_DGRAM:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((wildcard, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            return None
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
        hint = " (ports below 1024 need root: serve them without --uid)" if exc.errno == errno.EACCES else ""
        if transparent and exc.errno == errno.EPERM:
            hint = " (IP_TRANSPARENT needs CAP_NET_ADMIN)"
        raise LabError("cannot listen on %s/%s%s: %s%s"
                       % (format_endpoint(wildcard, port), proto, " (transparent)" if transparent else "",
                          exc.strerror, hint)) from None
    return sock


def open_server_sockets(tcp_ports, udp_ports, tproxy_ports=()):
    """Bind every requested port on 0.0.0.0 and on :: (IPv6 skipped when unavailable)."""
    sockets = []
    try:
        for kind, ports, transparent in ((socket.SOCK_STREAM, tcp_ports, False), (socket.SOCK_DGRAM, udp_ports, False),
                                         (socket.SOCK_STREAM, tproxy_ports, True)):
            for port in ports:
                for family in (socket.AF_INET, socket.AF_INET6):
                    sock = open_server_socket(family, kind, port, transparent)
                    if sock is not None:
                        sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def make_reply(label, proto, local, original_dst, peer, peer_uid, listener=None):
    """The JSON object a server sends for each connection or datagram.

    ``listener``: only for a connection a transparent (``--tproxy``) listener accepted, the address that
    listener is bound to; ``local`` is then the address the client connected to.
    """
    reply = {
        "served_by": label,
        "proto": proto,
        "local": local,
        "original_dst": original_dst,
        "peer": peer,
        "peer_uid": peer_uid,
    }
    if listener is not None:
        reply["listener"] = listener
    return reply


def is_transparent(sock):
    """True for a listener opened with ``--tproxy`` (IP_TRANSPARENT / IPV6_TRANSPARENT set)."""
    if sock.family == socket.AF_INET6:
        return bool(sock.getsockopt(SOL_IPV6, IPV6_TRANSPARENT))
    return bool(sock.getsockopt(SOL_IP, IP_TRANSPARENT))


def tproxy_destination(local, listen_port):
    """The original destination of a connection a transparent listener accepted: its local address,
    which TPROXY leaves as the client sent it; None for a connection made to the listener's own port."""
    return None if local[1] == listen_port else format_endpoint(*local[:2])


def original_destination(conn):
    """``ip:port`` the client connected to before NAT redirected it here; None when not redirected."""
    if conn.family == socket.AF_INET6:
        level, option, size = SOL_IPV6, IP6T_SO_ORIGINAL_DST, SOCKADDR_IN6_SIZE
    else:
        level, option, size = SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE
    try:
        destination = format_endpoint(*decode_sockaddr(conn.getsockopt(level, option, size)))
    except (OSError, ValueError):
        return None  # no conntrack entry: the connection was not NATed
    local = format_endpoint(*conn.getsockname()[:2])
    return None if destination == local else destination


def local_peer_uid(family, host, port):
    """Owner uid of a peer socket in this namespace (connections over loopback or to self)."""
    table = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    try:
        with open(table, "r") as handle:
            return find_socket_uid(handle.read(), host, port)
    except OSError:
        return None


def answer_tcp(label, listener, transparent=False):
    try:
        conn, peer = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return
    with conn:
        conn.settimeout(2.0)
        local = conn.getsockname()
        bound = listener.getsockname()
        reply = make_reply(
            label,
            "tcp",
            format_endpoint(*local[:2]),
            tproxy_destination(local, bound[1]) if transparent else original_destination(conn),
            format_endpoint(*peer[:2]),
            local_peer_uid(conn.family, peer[0], peer[1]),
            format_endpoint(*bound[:2]) if transparent else None,
        )
        try:
            conn.sendall((json.dumps(reply) + "\n").encode())
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            log.info("tcp reply to %s failed: %s", reply["peer"], exc)
            return
    log.info("answered %s", json.dumps(reply))


def answer_udp(label, sock):
    try:
        _data, ancdata, _flags, peer = sock.recvmsg(MAX_REPLY, socket.CMSG_SPACE(IN6_PKTINFO.size))
    except (BlockingIOError, InterruptedError):
        return
    except OSError as exc:  # e.g. an ICMP error queued for this socket
        log.info("udp receive failed: %s", exc)
        return
    local_host = sock.getsockname()[0]
    pktinfo = []
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            _ifindex, _spec_dst, address = IN_PKTINFO.unpack_from(data)
            local_host = socket.inet_ntop(socket.AF_INET, address)
            # Reply from the address the datagram was sent to, so conntrack can undo a REDIRECT.
            pktinfo = [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(0, address, b"\0" * 4))]
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= IN6_PKTINFO.size:
            address, _ifindex = IN6_PKTINFO.unpack_from(data)
            local_host = socket.inet_ntop(socket.AF_INET6, address)
            pktinfo = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(address, 0))]
    reply = make_reply(
        label,
        "udp",
        format_endpoint(local_host, sock.getsockname()[1]),
        None,  # SO_ORIGINAL_DST is TCP only; the local port shows whether capture happened
        format_endpoint(*peer[:2]),
        None,
    )
    try:
        sock.sendmsg([(json.dumps(reply) + "\n").encode()], pktinfo, 0, peer)
    except OSError as exc:
        log.info("udp reply to %s failed: %s", reply["peer"], exc)
        return
    log.info("answered %s", json.dumps(reply))


def serve_forever(label, sockets, max_seconds):
    """Answer connections and datagrams one at a time until SIGTERM or ``max_seconds``."""
    deadline = time.monotonic() + max_seconds
    transparent = {sock for sock in sockets if sock.type == socket.SOCK_STREAM and is_transparent(sock)}
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.info("stopping: --max-seconds reached")
            return
        readable = select.select(sockets, [], [], remaining)[0]
        for sock in readable:
            if sock.type == socket.SOCK_STREAM:
                answer_tcp(label, sock, sock in transparent)
            else:
                answer_udp(label, sock)


def describe_sockets(sockets):
    return [format_endpoint(*sock.getsockname()[:2]) + ("/udp" if sock.type == socket.SOCK_DGRAM else
                                                        "/tcp (transparent)" if is_transparent(sock) else "/tcp")
            for sock in sockets]


def become(uid, gid):
    """Take ``uid``/``gid`` (None keeps the current one), with no supplementary groups when root."""
    if os.geteuid() == 0:
        os.setgroups([])
    if gid is not None:
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def _detach_stdio(log_fd):
    null = os.open(os.devnull, os.O_RDWR)
    out = null if log_fd is None else log_fd
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in sorted({null, out}):
        if fd > 2:
            os.close(fd)


def _report(fd, message):
    os.write(fd, (json.dumps(message) + "\n").encode())
    os.close(fd)


def run_daemon(args, tcp_ports, udp_ports, tproxy_ports, log_fd, ready_fd):
    """Body of the background server (the grandchild of the caller). Never returns.

    It tells the waiting caller, through ``ready_fd``, either ``{"pid": ..., "listening": [...]}``
    once every socket is bound, or ``{"error": ...}``.
    """
    status = 1
    try:
        os.chdir("/")
        os.umask(0o022)
        _detach_stdio(log_fd)
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="%(asctime)s capture_lab[%(process)d] %(message)s")
        sockets = []
        try:
            enter_netns(args.netns)
            # Transparent listeners first, while still root: IP_TRANSPARENT needs CAP_NET_ADMIN, which
            # Envoy keeps as the proxy uid and this tool does not. Only an inbound listener is transparent,
            # and what it accepts only ever answers (no new connection), so its owner matches no rule.
            sockets = open_server_sockets((), (), tproxy_ports)
            # Before the other sockets: netfilter's owner match sees who created a socket, so a stand-in
            # proxy must create its sockets as the proxy uid (DNS capture's conntrack-zone rules need it).
            become(args.uid, args.gid)
            sockets += open_server_sockets(tcp_ports, udp_ports)
        except LabError as exc:
            for sock in sockets:
                sock.close()
            _report(ready_fd, {"error": str(exc)})
            return
        except OSError as exc:
            for sock in sockets:
                sock.close()
            _report(ready_fd, {"error": "cannot run as uid %s gid %s: %s" % (args.uid, args.gid, exc.strerror)})
            return
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGINT, _raise_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        listening = describe_sockets(sockets)
        log.info("serving %r in netns %r as uid %d gid %d: %s", args.label, args.netns, os.getuid(), os.getgid(),
                 ", ".join(listening))
        _report(ready_fd, {"pid": os.getpid(), "listening": listening})
        try:
            serve_forever(args.label, sockets, args.max_seconds)
        except _Stop as stop:
            log.info("stopping: %s", stop)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for sock in sockets:
                sock.close()
            remove_pidfile(args.pidfile, only_pid=os.getpid())  # best effort: the uid may not be allowed to
        status = 0
    except BaseException:  # the daemon has nobody to report to but its log
        log.exception("server failed")
    finally:
        os._exit(status)


def read_report(ready_fd, logfile):
    """In the caller: the daemon's first message, or LabError when it died or hangs."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while not data.endswith(b"\n"):
        readable = select.select([ready_fd], [], [], max(0.0, deadline - time.monotonic()))[0]
        chunk = os.read(ready_fd, 4096) if readable else b""
        if not chunk:
            break
        data += chunk
    os.close(ready_fd)
    try:
        return json.loads(data.decode())
    except ValueError:
        where = " (see %s)" % logfile if logfile else " (use --logfile to see why)"
        raise LabError("the server exited before it was ready" + where) from None


def write_pidfile(path, pid):
    temporary = "%s.%d.tmp" % (path, pid)
    with open(temporary, "w") as handle:
        handle.write("%d\n" % pid)
    os.replace(temporary, path)


def cmd_serve(args):
    tcp_ports = parse_ports(args.tcp)
    udp_ports = parse_ports(args.udp)
    tproxy_ports = parse_ports(args.tproxy)
    if not tcp_ports and not udp_ports and not tproxy_ports:
        raise UsageError("give at least one --tcp or --udp port (or --tproxy port)")
    both = sorted(set(tcp_ports) & set(tproxy_ports))
    if both:
        raise UsageError("TCP port %s is in both --tcp and --tproxy" % ",".join(str(port) for port in both))
    if not args.label:
        raise UsageError("--label must not be empty")
    args.pidfile = os.path.abspath(args.pidfile)
    logfile = os.path.abspath(args.logfile) if args.logfile else None
    if not os.path.isdir(os.path.dirname(args.pidfile)):
        raise LabError("the directory of pidfile %s does not exist" % args.pidfile)
    running = running_server(args.pidfile)
    if running:
        raise LabError("a capture_lab server (pid %d) already runs with pidfile %s" % (running, args.pidfile))
    try:
        log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if logfile else None
    except OSError as exc:
        raise LabError("cannot open logfile %s: %s" % (logfile, exc.strerror)) from None

    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:  # the daemon, re-parented once its parent exits: it can never get a terminal
                run_daemon(args, tcp_ports, udp_ports, tproxy_ports, log_fd, ready_w)
        finally:
            os._exit(0)
    # The caller: wait for the daemon to bind everything, then write its pidfile and report.
    os.close(ready_w)
    if log_fd is not None:
        os.close(log_fd)
    os.waitpid(child, 0)
    report = read_report(ready_r, logfile)
    if "error" in report:
        raise LabError(report["error"])
    pid = report["pid"]
    try:
        write_pidfile(args.pidfile, pid)
    except OSError as exc:
        os.kill(pid, signal.SIGTERM)  # our own daemon: without a pidfile nobody could stop it
        raise LabError("cannot write pidfile %s: %s" % (args.pidfile, exc.strerror)) from None
    print(json.dumps({"serving": args.label, "pid": pid, "netns": args.netns, "uid": args.uid, "gid": args.gid,
                      "listening": report["listening"]}))
    return 0


# --------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------


def describe_error(exc):
    """A short, stable description of why a probe got no answer."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    names = {
        errno.EHOSTUNREACH: "host unreachable",
        errno.ENETUNREACH: "network unreachable",
        errno.EPERM: "operation not permitted",
        errno.EACCES: "permission denied",
        errno.EADDRNOTAVAIL: "source address not available",
    }
    if isinstance(exc, OSError) and exc.errno in names:
        return names[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


def _read_line(sock):
    data = b""
    while b"\n" not in data and len(data) < MAX_REPLY:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _probe(netns, address, port, udp, uid, gid, source, timeout):
    """Runs in a forked child: enter the namespace, become uid/gid, connect, return the answer."""
    enter_netns(netns)
    become(uid, gid)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(timeout)
            if source:
                sock.bind((source, 0))
            sock.connect((str(address), port))
            if udp:
                sock.send(b"capture_lab probe\n")
                data = sock.recv(MAX_REPLY)
            else:
                data = _read_line(sock)
    except OSError as exc:
        return {"error": describe_error(exc)}
    if not data.strip():
        return {"error": "empty reply"}
    try:
        reply = json.loads(data.decode("utf-8", "replace").splitlines()[0])
    except ValueError:
        return {"error": "not a capture_lab reply: %r" % data[:80]}
    if not isinstance(reply, dict) or "error" in reply:
        return {"error": "not a capture_lab reply: %r" % data[:80]}
    return reply


def run_probe(netns, address, port, udp=False, uid=None, gid=None, source=None, timeout=3.0):
    """Probe from a forked child (setns and setuid cannot be undone) and return its result."""
    info = {
        "netns": netns,
        "to": format_endpoint(address, port),
        "proto": "udp" if udp else "tcp",
        "uid": os.geteuid() if uid is None else uid,
        "gid": os.getegid() if gid is None else gid,
        "source": source,
    }
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        try:
            signal.alarm(int(timeout) + 5)  # a hard limit, whatever happens in here
            try:
                result = _probe(netns, address, port, udp, uid, gid, source, timeout)
            except (LabError, UsageError) as exc:
                result = {"error": str(exc)}
            except OSError as exc:
                result = {"error": "probe setup failed: %s" % describe_error(exc)}
            except Exception as exc:  # report, never fall back into the caller's code
                result = {"error": "probe failed: %r" % exc}
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(child, 0)
    try:
        result = json.loads(data.decode())
    except ValueError:
        result = {"error": "the probe process ended without an answer"}
    result["probe"] = info
    return result


def parse_source(text, version):
    if not text:
        return None
    try:
        source = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError("--source %r is not an IP address" % text) from None
    if source.version != version:
        raise UsageError("--source %s is not of the same address family as the destination" % source)
    return str(source)


def cmd_probe(args):
    address, port = args.to
    result = run_probe(
        args.netns, address, port, udp=args.udp, uid=args.uid, gid=args.gid,
        source=parse_source(args.source, address.version), timeout=args.timeout,
    )
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# stop
# --------------------------------------------------------------------------------------------


def _wait_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def cmd_stop(args):
    pidfile = os.path.abspath(args.pidfile)
    pid = read_pidfile(pidfile)
    if pid is None:
        print("capture_lab stop: %s does not exist; nothing to stop" % pidfile)
        return 0
    if process_gone(pid) or not is_lab_server(process_cmdline(pid)):
        remove_pidfile(pidfile, only_pid=pid)
        print("capture_lab stop: pid %d is not a running capture_lab server; removed stale %s" % (pid, pidfile))
        return 0
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, STOP_TIMEOUT):
        if is_lab_server(process_cmdline(pid)):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 2.0):
            raise LabError("pid %d did not exit" % pid)
    remove_pidfile(pidfile, only_pid=pid)
    print("capture_lab stop: stopped pid %d" % pid)
    return 0


# --------------------------------------------------------------------------------------------
# matrix
# --------------------------------------------------------------------------------------------

PROBE_KEYS = {"name", "netns", "to", "udp", "uid", "gid", "source", "timeout", "expect"}


def _id_field(row, key, where):
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError("%s: %s must be a non-negative integer, not %r" % (where, key, value))
    return value


def load_spec(data):
    """Validate a matrix spec: a list of probes, or ``{"probes": [...], "proxy_label": ..., "capture_ports": {...}}``.

    Returns ``(probes, proxy_label, capture_ports)`` where capture_ports maps a local port of the
    stand-in proxy to the name of the capture it proves (15001 -> ``proxy-outbound``...).
    """
    proxy_label = DEFAULT_PROXY_LABEL
    capture_ports = dict(DEFAULT_CAPTURE_PORTS)
    if isinstance(data, dict):
        unknown = set(data) - {"probes", "proxy_label", "capture_ports"}
        if unknown:
            raise UsageError("spec: unknown keys %s" % ", ".join(sorted(unknown)))
        proxy_label = str(data.get("proxy_label", proxy_label))
        ports = data.get("capture_ports", {})
        if not isinstance(ports, dict):
            raise UsageError("spec: capture_ports must map a name to a port")
        capture_ports.update({str(name): parse_port(port) for name, port in ports.items()})
        data = data.get("probes")
    if not isinstance(data, list) or not data:
        raise UsageError("spec: expected a non-empty list of probes")
    probes = []
    for index, row in enumerate(data, 1):
        where = "spec probe %d" % index
        if not isinstance(row, dict):
            raise UsageError("%s: expected an object" % where)
        unknown = set(row) - PROBE_KEYS
        if unknown:
            raise UsageError("%s: unknown keys %s" % (where, ", ".join(sorted(unknown))))
        for key in ("netns", "to", "expect"):
            if not isinstance(row.get(key), str):
                raise UsageError("%s: %s is required (a string)" % (where, key))
        try:
            address, port = parse_endpoint(row["to"])
            check_allowed(address)
            source = parse_source(row.get("source"), address.version)
        except UsageError as exc:
            raise UsageError("%s: %s" % (where, exc)) from None
        if not isinstance(row.get("udp", False), bool):
            raise UsageError("%s: udp must be true or false" % where)
        timeout = row.get("timeout", 3)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise UsageError("%s: timeout must be a positive number" % where)
        probes.append({
            "name": str(row.get("name") or row["to"]),
            "netns": row["netns"],
            "address": address,
            "port": port,
            "udp": row.get("udp", False),
            "uid": _id_field(row, "uid", where),
            "gid": _id_field(row, "gid", where),
            "source": source,
            "timeout": float(timeout),
            "expect": row["expect"],
        })
    return probes, proxy_label, {port: name for name, port in capture_ports.items()}


def went_to(result, proxy_label, capture_ports):
    """Where a probe ended up: a capture name (``proxy-outbound``...), a server label, or an error."""
    if "error" in result:
        return "refused" if result["error"] == "connection refused" else result["error"]
    label = str(result.get("served_by"))
    try:
        # A transparent listener's connections keep their own local port: the listener's port tells the capture.
        port = parse_endpoint(str(result.get("listener") or result.get("local")))[1]
    except UsageError:
        return label
    if label == proxy_label and port in capture_ports:
        return capture_ports[port]
    return label


def as_expected(expect, result, destination):
    """``expect`` is a capture name, a label, ``label:port``, ``refused`` or another error text."""
    if expect == destination:
        return True
    if "error" in result:
        return False
    try:
        port = parse_endpoint(str(result.get("local")))[1]
    except UsageError:
        return False
    return expect == "%s:%d" % (result.get("served_by"), port)


def describe_source(probe):
    text = "%s uid %d" % (probe["netns"] or "(current netns)", os.geteuid() if probe["uid"] is None else probe["uid"])
    if probe["gid"] is not None:
        text += " gid %d" % probe["gid"]
    if probe["source"]:
        text += " from %s" % probe["source"]
    return text


COLUMNS = (("traffic", "name"), ("from", "from"), ("to", "to"), ("expected", "expected"), ("went to", "went_to"), ("ok", "ok"))


def render_table(rows):
    """A plain-text table of matrix rows (dicts with the keys of COLUMNS)."""
    cells = [[title for title, _key in COLUMNS]]
    for row in rows:
        cells.append([("yes" if row[key] else "NO") if key == "ok" else str(row[key]) for _title, key in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def cmd_matrix(args):
    try:
        with open(args.spec, "r") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise LabError("cannot read %s: %s" % (args.spec, exc.strerror)) from None
    except ValueError as exc:
        raise UsageError("%s is not valid JSON: %s" % (args.spec, exc)) from None
    probes, proxy_label, capture_ports = load_spec(data)
    rows = []
    for probe in probes:
        result = run_probe(probe["netns"], probe["address"], probe["port"], probe["udp"], probe["uid"],
                           probe["gid"], probe["source"], probe["timeout"])
        destination = went_to(result, proxy_label, capture_ports)
        rows.append({
            "name": probe["name"],
            "from": describe_source(probe),
            "to": result["probe"]["to"] + ("/udp" if probe["udp"] else ""),
            "expected": probe["expect"],
            "went_to": destination,
            "ok": as_expected(probe["expect"], result, destination),
            "result": result,
        })
    print(render_table(rows))
    failed = sum(1 for row in rows if not row["ok"])
    print(json.dumps({"matrix": {"total": len(rows), "passed": len(rows) - failed, "failed": failed}, "rows": rows}))
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _argtype(parse):
    """Adapt a parser raising UsageError to argparse (which then exits with status 2)."""
    def convert(text):
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def _allowed_endpoint(text):
    address, port = parse_endpoint(text)
    return check_allowed(address), port


def _id_number(text):
    if not (text.isascii() and text.isdigit()):
        raise UsageError("%r is not a numeric id" % text)
    return int(text)


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise UsageError("%r is not a number" % text) from None
    if value <= 0:
        raise UsageError("%r must be positive" % text)
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="capture_lab",
        description="Prove where traffic goes under Istio-style capture rules, with real connections "
                    "between network namespaces.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser("serve", help="answer connections with a JSON line, in the background")
    serve.add_argument("--netns", required=True, help="named network namespace ('' = the current one)")
    serve.add_argument("--label", required=True, help="name this server reports as served_by")
    serve.add_argument("--tcp", default="", metavar="PORTS", help="comma-separated TCP ports")
    serve.add_argument("--udp", default="", metavar="PORTS", help="comma-separated UDP ports")
    serve.add_argument("--tproxy", default="", metavar="PORTS",
                       help="comma-separated TCP ports to listen on as a TPROXY-mode proxy (IP_TRANSPARENT, "
                            "IPV6_TRANSPARENT; needs root): the answer's original_dst is the connection's "
                            "local address, its listener the port it arrived on")
    serve.add_argument("--uid", type=_argtype(_id_number),
                       help="numeric uid to serve as, e.g. the proxy's 1337 (default: stay root)")
    serve.add_argument("--gid", type=_argtype(_id_number), help="numeric gid to serve as (default: stay root)")
    serve.add_argument("--pidfile", required=True, help="written once every socket is bound")
    serve.add_argument("--logfile", help="log of every answer (default: no log)")
    serve.add_argument("--max-seconds", type=_argtype(_positive), default=3600.0,
                       help="exit by itself after this long (default 3600)")
    serve.set_defaults(func=cmd_serve)

    probe = commands.add_parser("probe", help="connect from a namespace as a uid/gid, print the answer")
    probe.add_argument("--netns", required=True, help="named network namespace ('' = the current one)")
    probe.add_argument("--to", required=True, type=_argtype(_allowed_endpoint), metavar="ADDR:PORT",
                       help="destination, [ADDR]:PORT for IPv6; lab ranges only")
    probe.add_argument("--udp", action="store_true", help="send a UDP datagram instead of connecting")
    probe.add_argument("--uid", type=_argtype(_id_number), help="numeric uid to probe as (default: stay root)")
    probe.add_argument("--gid", type=_argtype(_id_number), help="numeric gid to probe as (default: stay root)")
    probe.add_argument("--source", metavar="ADDR", help="source address to bind, e.g. 127.0.0.6")
    probe.add_argument("--timeout", type=_argtype(_positive), default=3.0, help="seconds (default 3)")
    probe.set_defaults(func=cmd_probe)

    stop = commands.add_parser("stop", help="stop a server by its pidfile")
    stop.add_argument("--pidfile", required=True)
    stop.set_defaults(func=cmd_stop)

    matrix = commands.add_parser("matrix", help="run the probes of a JSON spec and tabulate the results")
    matrix.add_argument("--spec", required=True, metavar="FILE.json")
    matrix.set_defaults(func=cmd_matrix)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print("capture_lab %s: error: %s" % (args.command, exc), file=sys.stderr)
        return 2
    except LabError as exc:
        print("capture_lab %s: %s" % (args.command, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
