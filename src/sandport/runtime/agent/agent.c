/*
 * sandport-agent: the in-sandbox helper that runs commands for the runtime API.
 *
 * It runs inside the container (as the child of the init), so everything it starts
 * inherits the sandbox's namespaces, cgroup, capabilities, seccomp filter and
 * no-new-privileges, exactly as the container's own processes do. The server reaches it
 * over the sandbox's veth address on port 4001, which sandboxes cannot reach from outside.
 *
 * One connection carries one command. Integers are big endian; a frame is
 * u8 kind, u32 payload length, payload.
 *
 * Request: u32 length, then that many bytes of NUL-terminated strings, either
 *   v1: "sandport-exec-1", cwd, argc, argv..., envc, env...
 *   v2: "sandport-exec-2", argc, argv..., envc, env..., options "key=value"...
 *       cwd=/path        required
 *       stdin=pipe|null  default null (/dev/null); ignored with pty= (input goes to it)
 *       pty=ROWSxCOLS    run on a new pseudo-terminal (session leader, controlling tty);
 *                        all output comes as 'o' frames
 *       uid=N gid=N groups=A,B,...  run as that user: setgroups (the given list, empty if
 *                        groups= is absent), then setgid, then setuid, in the child
 *   An unknown, repeated or malformed option fails the request with 'f' "bad request".
 *
 * Agent -> server frames:
 *   'p' u32 pid (v2 only): once, after the exec succeeded, before any output
 *   'o' stdout bytes   'e' stderr bytes
 *   'x' exit: u32 code (128+N when killed by signal N); v2 adds u32 signal (0 if none)
 *   'f' failure to start: a message ("chdir: ...", "user: ...", "pty: ...", "exec: ...")
 *
 * Server -> agent frames (v2 only, after the request):
 *   'i' bytes for the process's stdin (the pty master with pty=), at most 1 MiB each.
 *       Dropped if there is no stdin pipe, after 'c', or once the process closed its end.
 *   'c' (empty) close stdin. With a pty: write the terminal's VEOF character (^D) once
 *       instead, which ends input for a program reading in canonical mode.
 *   's' u32 signal (1-64, others ignored): to the process group (kill(-pid)), or to the
 *       process if the group is gone (only before the exit is reaped).
 *   'w' u16 rows, u16 cols: resize the pty (ignored without one).
 *   Any other kind or a wrong length ends everything, as a disconnect does.
 * While stdin input is pending (the process is not reading it), the agent stops reading
 * the socket: the client's writes block instead of the agent's memory growing. Frames
 * queued behind that input ('s' included) wait too, and so does a FIN that the client's
 * kernel cannot send past a full window: to end such a command at once, reset the
 * connection (SO_LINGER 0, then close). A peer that vanished is noticed by keepalive.
 *
 * After its last frame ('x' or 'f'), a v2 connection is half-closed, and what the client
 * still sends is dropped until it closes too (at most 2 s): no reset, no lost last frame.
 *
 * If the client closes the connection before the exit frame, the command's process group
 * is killed: a command never outlives the request that started it.
 *
 * Usage: sandport-agent PORT HOST_IP. Only connections from HOST_IP (the host end of the
 * sandbox's veth, which no process in the sandbox can take: it lacks CAP_NET_ADMIN) are
 * served, so a process in the sandbox cannot use the agent to act as the agent's user.
 *
 * Build: cc -O2 -static -o sandport-agent agent.c   (the server does this on first start)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAGIC_V1 "sandport-exec-1"
#define MAGIC_V2 "sandport-exec-2"
#define MAX_REQUEST (4 << 20)
#define MAX_STRINGS 65536
#define MAX_GROUPS 65536
#define MAX_STDIN_FRAME (1u << 20)
#define PENDING_CAP 65536
#define DRAIN_GRACE_MS 250
#define LINGER_MS 2000

/* What went wrong in the child before exec (reported over the "ready" pipe). */
enum stage { STAGE_CHDIR = 1, STAGE_EXEC, STAGE_USER, STAGE_PTY };
static const char *const stage_names[] = {"", "chdir", "exec", "user", "pty"};

struct request {
    int version;
    char **args, **envs;
    const char *cwd;
    int stdin_pipe, pty;
    struct winsize size;
    int set_uid, set_gid, set_groups;
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    size_t ngroups;
};

/* One running command and the state of its connection. */
struct conn {
    int sock, version;
    pid_t pid;
    int pidfd;
    int out_fd, err_fd; /* -1 once at EOF */
    int in_fd;          /* where 'i' data goes; -1 if none or closed */
    int pty_master;     /* -1 without a pty (then in_fd is our own pipe end) */
    int veof_sent;
    int exited, status;
    /* the client frame being read */
    unsigned char head[5];
    size_t head_have;
    char kind;
    uint32_t left;
    unsigned char arg[4];
    size_t arg_have;
    /* stdin data received but not yet written */
    char pending[PENDING_CAP];
    size_t pend_off, pend_len;
};

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_frame(int sock, char kind, const void *data, uint32_t len) {
    unsigned char head[5];
    uint32_t be = htonl(len);
    head[0] = (unsigned char)kind;
    memcpy(head + 1, &be, 4);
    if (write_all(sock, head, 5) < 0) return -1;
    return len ? write_all(sock, data, len) : 0;
}

static void fail(int sock, const char *what) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", what, strerror(errno));
    send_frame(sock, 'f', msg, (uint32_t)strlen(msg));
}

static void bad_request(int sock, int version) {
    if (version == 1) { /* v1's message, unchanged */
        errno = EPROTO;
        fail(sock, "bad request");
    } else {
        send_frame(sock, 'f', "bad request", 11);
    }
}

/* Split the request into strings; returns the count or -1 if malformed. */
static int split(char *buf, uint32_t len, char **out, int max) {
    int n = 0;
    uint32_t start = 0;
    if (len == 0 || buf[len - 1] != '\0') return -1;
    for (uint32_t i = 0; i < len; i++) {
        if (buf[i] == '\0') {
            if (n == max) return -1;
            out[n++] = buf + start;
            start = i + 1;
        }
    }
    return n;
}

/* Parse the decimal in [s, end) into *out if it is all digits, non-empty and <= max. */
static int parse_num(const char *s, const char *end, unsigned long max, unsigned long *out) {
    unsigned long v = 0;
    if (s == end) return -1;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > max) return -1;
    }
    *out = v;
    return 0;
}

static int parse_count(const char *s, unsigned long *out) {
    return parse_num(s, s + strlen(s), MAX_STRINGS, out);
}

/* An id for setuid/setgid/setgroups: u32, but not (uid_t)-1, which means "unchanged". */
static int parse_id(const char *s, const char *end, unsigned long *out) {
    return parse_num(s, end, 0xfffffffeUL, out);
}

static int parse_groups(const char *s, struct request *req) {
    size_t n = *s ? 1 : 0;
    for (const char *p = s; *p; p++) n += *p == ',';
    if (n > MAX_GROUPS) return -1;
    req->groups = calloc(n ? n : 1, sizeof *req->groups);
    if (!req->groups) return -1;
    req->ngroups = n;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(s, ',');
        if (!end) end = s + strlen(s);
        unsigned long id;
        if (parse_id(s, end, &id) < 0) return -1;
        req->groups[i] = (gid_t)id;
        s = *end ? end + 1 : end;
    }
    return 0;
}

static int parse_option(char *opt, struct request *req, unsigned *seen) {
    static const char *const keys[] = {"cwd", "stdin", "pty", "uid", "gid", "groups"};
    char *eq = strchr(opt, '=');
    if (!eq) return -1;
    *eq = '\0';
    const char *val = eq + 1;
    unsigned k = 0;
    while (k < sizeof keys / sizeof *keys && strcmp(opt, keys[k]) != 0) k++;
    if (k == sizeof keys / sizeof *keys || (*seen & (1u << k))) return -1;
    *seen |= 1u << k;
    unsigned long a, b;
    switch (k) {
    case 0:
        req->cwd = val;
        return 0;
    case 1:
        if (strcmp(val, "pipe") == 0) req->stdin_pipe = 1;
        else if (strcmp(val, "null") != 0) return -1;
        return 0;
    case 2: {
        const char *x = strchr(val, 'x');
        if (!x || parse_num(val, x, 0xffff, &a) < 0 ||
            parse_num(x + 1, x + 1 + strlen(x + 1), 0xffff, &b) < 0)
            return -1;
        req->pty = 1;
        req->size.ws_row = (unsigned short)a;
        req->size.ws_col = (unsigned short)b;
        return 0;
    }
    case 3:
        if (parse_id(val, val + strlen(val), &a) < 0) return -1;
        req->set_uid = 1;
        req->uid = (uid_t)a;
        return 0;
    case 4:
        if (parse_id(val, val + strlen(val), &a) < 0) return -1;
        req->set_gid = 1;
        req->gid = (gid_t)a;
        return 0;
    default:
        req->set_groups = 1;
        return parse_groups(val, req);
    }
}

/* Parse the strings of a request; returns 0, or -1 if malformed. */
static int parse_request(char **strs, int n, struct request *req) {
    unsigned long argc, envc;
    int i;
    if (n >= 1 && strcmp(strs[0], MAGIC_V1) == 0) {
        req->version = 1;
        if (n < 3) return -1;
        req->cwd = strs[1];
        i = 2;
    } else if (n >= 1 && strcmp(strs[0], MAGIC_V2) == 0) {
        req->version = 2;
        i = 1;
    } else {
        return -1;
    }
    if (i >= n || parse_count(strs[i], &argc) < 0 || argc < 1 || i + 1 + (long)argc >= n)
        return -1;
    char **argv = strs + i + 1;
    i += 1 + (int)argc;
    if (parse_count(strs[i], &envc) < 0 || i + 1 + (long)envc > n) return -1;
    char **envp = strs + i + 1;
    i += 1 + (int)envc;
    if (req->version == 1 && i != n) return -1;
    unsigned seen = 0;
    for (; i < n; i++)
        if (parse_option(strs[i], req, &seen) < 0) return -1;
    if (!req->cwd) return -1;
    if (req->pty) req->stdin_pipe = 0; /* input goes to the terminal */
    if (req->set_uid || req->set_gid) req->set_groups = 1; /* never keep root's groups */
    /* argv and envp must be NULL-terminated: copy them into arrays with room for it. */
    req->args = calloc(argc + 1, sizeof *req->args);
    req->envs = calloc(envc + 1, sizeof *req->envs);
    if (!req->args || !req->envs) return -1;
    memcpy(req->args, argv, argc * sizeof *req->args);
    memcpy(req->envs, envp, envc * sizeof *req->envs);
    return 0;
}

static void child_fail(int ready, int stage) {
    int report[2] = {stage, errno};
    write_all(ready, report, sizeof report);
    _exit(127);
}

/* In the forked child: set up stdio, user and cwd, then exec; never returns. */
static void child(const struct request *req, const char *slave_path, int in, int out,
                  int err, int ready) {
    setsid();
    signal(SIGPIPE, SIG_DFL);
    if (req->pty) {
        int slave = open(slave_path, O_RDWR | O_NOCTTY);
        if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0 ||
            ioctl(slave, TIOCSWINSZ, &req->size) < 0)
            child_fail(ready, STAGE_PTY);
        dup2(slave, 0);
        dup2(slave, 1);
        dup2(slave, 2);
        if (slave > 2) close(slave);
    } else {
        int fd = in >= 0 ? in : open("/dev/null", O_RDONLY);
        if (fd >= 0) dup2(fd, 0);
        dup2(out, 1);
        dup2(err, 2);
    }
    if (req->set_groups && setgroups(req->ngroups, req->groups) < 0)
        child_fail(ready, STAGE_USER);
    if (req->set_gid && setgid(req->gid) < 0) child_fail(ready, STAGE_USER);
    if (req->set_uid && setuid(req->uid) < 0) child_fail(ready, STAGE_USER);
    if (chdir(req->cwd) < 0) child_fail(ready, STAGE_CHDIR);
    execve(req->args[0], req->args, req->envs);
    child_fail(ready, STAGE_EXEC);
}

/* Start the command; returns 0, or -1 after sending an 'f' frame. */
static int spawn(const struct request *req, struct conn *c) {
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, ready[2];
    char slave_path[128] = "";
    int master = -1;
    if (req->pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ||
            ptsname_r(master, slave_path, sizeof slave_path) != 0) {
            fail(c->sock, "pty");
            return -1;
        }
    } else if ((req->stdin_pipe && pipe2(in, O_CLOEXEC) < 0) || pipe2(out, O_CLOEXEC) < 0 ||
               pipe2(err, O_CLOEXEC) < 0) {
        fail(c->sock, "pipe");
        return -1;
    }
    if (pipe2(ready, O_CLOEXEC) < 0) {
        fail(c->sock, "pipe");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fail(c->sock, "fork");
        return -1;
    }
    if (pid == 0) child(req, slave_path, in[0], out[1], err[1], ready[1]);
    close(ready[1]);
    if (!req->pty) {
        if (in[0] >= 0) close(in[0]);
        close(out[1]);
        close(err[1]);
    }
    /* The pipe closes on exec (O_CLOEXEC): a report means the child failed before it. */
    int report[2];
    if (read(ready[0], report, sizeof report) == (ssize_t)sizeof report) {
        errno = report[1];
        waitpid(pid, NULL, 0);
        int stage = report[0] >= STAGE_CHDIR && report[0] <= STAGE_PTY ? report[0] : STAGE_EXEC;
        fail(c->sock, stage_names[stage]);
        return -1;
    }
    close(ready[0]);
    c->pid = pid;
    c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    c->pty_master = master;
    if (req->pty) {
        c->out_fd = c->in_fd = master;
        c->err_fd = -1;
        fcntl(master, F_SETFL, O_NONBLOCK);
    } else {
        c->out_fd = out[0];
        c->err_fd = err[0];
        c->in_fd = in[1];
        fcntl(out[0], F_SETFL, O_NONBLOCK);
        fcntl(err[0], F_SETFL, O_NONBLOCK);
        if (in[1] >= 0) fcntl(in[1], F_SETFL, O_NONBLOCK);
    }
    return 0;
}

/* Forward what is readable on fd as frames; returns 0 at EOF (or EIO: pty slave gone),
 * 1 if more may come, -1 if the client is gone. */
static int pump(int fd, int sock, char kind) {
    char buf[65536];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
    if (n <= 0) return 0;
    if (send_frame(sock, kind, buf, (uint32_t)n) < 0) return -1;
    return 1;
}

/* Signal the command's process group, or the command alone if the group is gone. */
static void signal_command(struct conn *c, int sig) {
    if (kill(-c->pid, sig) < 0 && errno == ESRCH && !c->exited) kill(c->pid, sig);
}

static void drop_stdin(struct conn *c) {
    if (c->in_fd >= 0 && c->pty_master < 0) close(c->in_fd);
    c->in_fd = -1;
    c->pend_off = c->pend_len = 0;
}

/* Write pending stdin data without blocking; what is left waits for POLLOUT. */
static void flush_stdin(struct conn *c) {
    while (c->pend_len > 0) {
        ssize_t n = write(c->in_fd, c->pending + c->pend_off, c->pend_len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) { /* EPIPE: the process closed its stdin; EIO: the pty slave is gone */
            drop_stdin(c);
            return;
        }
        c->pend_off += (size_t)n;
        c->pend_len -= (size_t)n;
    }
    c->pend_off = 0;
}

static void close_stdin(struct conn *c) {
    if (c->in_fd < 0) return;
    if (c->pty_master < 0) {
        drop_stdin(c);
    } else if (!c->veof_sent) {
        struct termios t;
        int ok = tcgetattr(c->pty_master, &t) == 0 && t.c_cc[VEOF] != _POSIX_VDISABLE;
        c->pending[0] = ok ? (char)t.c_cc[VEOF] : 0x04;
        c->pend_len = 1;
        c->veof_sent = 1;
        flush_stdin(c);
    }
}

/* A client frame's header is complete: check it; act at once if it has no payload. */
static int start_frame(struct conn *c) {
    uint32_t len;
    memcpy(&len, c->head + 1, 4);
    len = ntohl(len);
    c->kind = (char)c->head[0];
    switch (c->kind) {
    case 'i':
        if (len > MAX_STDIN_FRAME) return -1;
        break;
    case 'c':
        if (len != 0) return -1;
        close_stdin(c);
        break;
    case 's':
    case 'w':
        if (len != 4) return -1;
        break;
    default:
        return -1;
    }
    c->left = len;
    c->arg_have = 0;
    if (len == 0) c->head_have = 0;
    return 0;
}

/* An 's' or 'w' frame's 4-byte payload is complete. */
static void finish_frame(struct conn *c) {
    if (c->kind == 's') {
        uint32_t sig;
        memcpy(&sig, c->arg, 4);
        sig = ntohl(sig);
        if (sig > 0 && sig < 65) signal_command(c, (int)sig);
    } else if (c->pty_master >= 0) {
        uint16_t rows, cols;
        memcpy(&rows, c->arg, 2);
        memcpy(&cols, c->arg + 2, 2);
        struct winsize ws = {.ws_row = ntohs(rows), .ws_col = ntohs(cols)};
        ioctl(c->pty_master, TIOCSWINSZ, &ws);
    }
}

/* Read and act on client frames until the socket has nothing more, stdin input is pending
 * (backpressure), or a few rounds are done (so output is not starved). Returns -1 when the
 * client is gone or broke the protocol. */
static int read_client(struct conn *c) {
    for (int round = 0; round < 16 && c->pend_len == 0; round++) {
        void *dst;
        size_t want;
        if (c->head_have < 5) {
            dst = c->head + c->head_have;
            want = 5 - c->head_have;
        } else if (c->kind == 'i') {
            dst = c->pending;
            want = c->left < PENDING_CAP ? c->left : PENDING_CAP;
        } else {
            dst = c->arg + c->arg_have;
            want = c->left;
        }
        ssize_t n = recv(c->sock, dst, want, MSG_DONTWAIT);
        if (n == 0) return -1;
        if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
        if (c->head_have < 5) {
            c->head_have += (size_t)n;
            if (c->head_have == 5 && start_frame(c) < 0) return -1;
        } else if (c->kind == 'i') {
            c->left -= (uint32_t)n;
            if (c->left == 0) c->head_have = 0;
            if (c->in_fd >= 0) { /* else dropped */
                c->pend_off = 0;
                c->pend_len = (size_t)n;
                flush_stdin(c);
            }
        } else {
            c->arg_have += (size_t)n;
            c->left -= (uint32_t)n;
            if (c->left == 0) {
                c->head_have = 0;
                finish_frame(c);
            }
        }
    }
    return 0;
}

/* v1 clients send nothing after the request: only watch for them going away. */
static int probe_client(int sock) {
    char probe;
    ssize_t r = recv(sock, &probe, 1, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) ? -1 : 0;
}

/* Pump output, input and control until the command exited and its output is drained. */
static int run(struct conn *c) {
    long drain_deadline = 0;
    for (;;) {
        int reading = c->version == 1 || c->pend_len == 0;
        struct pollfd fds[5] = {
            {c->out_fd, POLLIN, 0},
            {c->err_fd, POLLIN, 0},
            /* Even while not reading (input pending), notice the client going away. */
            {c->sock, reading ? POLLIN | POLLRDHUP : POLLRDHUP, 0},
            {c->exited ? -1 : c->pidfd, POLLIN, 0},
            {c->pend_len ? c->in_fd : -1, POLLOUT, 0},
        };
        /* After the exit, background children may hold the pipes: drain briefly.
         * Without a pidfd (kernel < 5.3), poll for the exit every 50 ms. */
        int timeout = c->pidfd < 0 ? 50 : -1;
        if (c->exited) {
            long left = drain_deadline - now_ms();
            if (left <= 0) return 0;
            timeout = (int)left;
        }
        int ready_count = poll(fds, 5, timeout);
        if (ready_count < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (ready_count == 0 && c->exited) return 0; /* drain grace over */
        if (fds[2].revents) {
            if (c->version == 1) {
                if (probe_client(c->sock) < 0) return -1;
            } else if (reading) {
                if (read_client(c) < 0) return -1;
            } else if (fds[2].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
                return -1;
            }
        }
        if (fds[4].revents && c->pend_len) flush_stdin(c);
        if (fds[0].revents) {
            int r = pump(c->out_fd, c->sock, 'o');
            if (r < 0) return -1;
            if (r == 0) {
                if (c->out_fd != c->pty_master) close(c->out_fd);
                c->out_fd = -1;
            }
        }
        if (fds[1].revents) {
            int r = pump(c->err_fd, c->sock, 'e');
            if (r < 0) return -1;
            if (r == 0) {
                close(c->err_fd);
                c->err_fd = -1;
            }
        }
        if (!c->exited && (fds[3].revents || c->pidfd < 0)) {
            if (waitpid(c->pid, &c->status, WNOHANG) == c->pid) {
                c->exited = 1;
                drain_deadline = now_ms() + DRAIN_GRACE_MS;
            }
        }
        if (c->exited && c->out_fd < 0 && c->err_fd < 0) return 0;
    }
}

static struct conn conn; /* one per handler process; too big for the stack's comfort */

/* After a v2 connection's last frame: half-close, then read and drop what the client still
 * sends until it closes too (or LINGER_MS passes). Closing with unread input would send a
 * reset, which can cost the client the last frame (asyncio raises it before buffered data). */
static void finish_connection(int sock) {
    long deadline = now_ms() + LINGER_MS;
    shutdown(sock, SHUT_WR);
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0) return;
        struct pollfd pfd = {sock, POLLIN, 0};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return;
        ssize_t n = recv(sock, conn.pending, sizeof conn.pending, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;
    }
}

static void serve_one(int sock) {
    uint32_t be_len, len;
    if (read_all(sock, &be_len, 4) < 0) return;
    len = ntohl(be_len);
    if (len == 0 || len > MAX_REQUEST) return;
    char *buf = malloc(len);
    char **strs = calloc(MAX_STRINGS, sizeof *strs);
    if (!buf || !strs || read_all(sock, buf, len) < 0) return;
    int n = split(buf, len, strs, MAX_STRINGS);
    struct request req = {0};
    if (n < 1 || parse_request(strs, n, &req) < 0) {
        int version = n >= 1 && strcmp(strs[0], MAGIC_V2) == 0 ? 2 : 1;
        bad_request(sock, version);
        if (version == 2) finish_connection(sock);
        return;
    }
    struct conn *c = &conn;
    c->sock = sock;
    c->version = req.version;
    if (spawn(&req, c) < 0) {
        if (c->version == 2) finish_connection(sock);
        return;
    }
    if (c->version == 2) {
        uint32_t be_pid = htonl((uint32_t)c->pid);
        if (send_frame(sock, 'p', &be_pid, 4) < 0) goto gone;
    }
    if (run(c) < 0) goto gone;
    int status = c->status;
    uint32_t sig = WIFSIGNALED(status) ? (uint32_t)WTERMSIG(status) : 0;
    uint32_t exit_payload[2] = {
        htonl(WIFEXITED(status) ? (uint32_t)WEXITSTATUS(status) : 128u + sig), htonl(sig)};
    if (send_frame(sock, 'x', exit_payload, c->version == 2 ? 8 : 4) == 0 && c->version == 2)
        finish_connection(sock);
    return;
gone: /* the client is gone: the command goes too */
    signal_command(c, SIGKILL);
    if (!c->exited) waitpid(c->pid, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: sandport-agent PORT HOST_IP\n");
        return 2;
    }
    /* Not dumpable: the sandbox's own root processes (same uid, no CAP_SYS_PTRACE) can
     * then neither ptrace the agent nor take its sockets with pidfd_getfd. Commands get
     * a dumpable state of their own again at execve. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int port = atoi(argv[1]);
    struct in_addr peer;
    if (inet_pton(AF_INET, argv[2], &peer) != 1) {
        fprintf(stderr, "sandport-agent: bad HOST_IP %s\n", argv[2]);
        return 2;
    }
    /* Keep 0-2 taken, so no pipe of ours lands there and is clobbered by dup2 in a child. */
    int fd;
    while ((fd = open("/dev/null", O_RDWR)) >= 0 && fd <= 2) {}
    if (fd > 2) close(fd);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_IGN); /* connection handlers are reaped by the kernel */
    int srv = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (srv < 0 || bind(srv, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(srv, 128) < 0) {
        perror("sandport-agent: listen");
        return 1;
    }
    for (;;) {
        struct sockaddr_in from;
        socklen_t from_len = sizeof from;
        int sock = accept4(srv, (struct sockaddr *)&from, &from_len, SOCK_CLOEXEC);
        if (sock < 0) continue;
        if (from.sin_family != AF_INET || from.sin_addr.s_addr != peer.s_addr) {
            close(sock);
            continue;
        }
        setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* A peer that vanished is noticed even while we wait without reading (stdin
         * backed up) or without writing (a silent command): see the header comment. */
        int idle = 30, interval = 10, count = 3;
        setsockopt(sock, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        setsockopt(sock, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(sock, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
        setsockopt(sock, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
        pid_t pid = fork();
        if (pid == 0) {
            close(srv);
            signal(SIGCHLD, SIG_DFL); /* the handler waits for its command itself */
            serve_one(sock);
            _exit(0);
        }
        close(sock);
    }
}
