/*
 * sandport-agent: the in-sandbox helper that runs commands for the runtime API.
 *
 * It runs inside the container (as the child of the init), so everything it starts
 * inherits the sandbox's namespaces, cgroup, capabilities, seccomp filter and
 * no-new-privileges, exactly as the container's own processes do. The server reaches it
 * over the sandbox's veth address on port 4001, which sandboxes cannot reach from outside.
 *
 * One connection carries one command:
 *   request:  u32 length (big endian), then that many bytes of NUL-terminated strings:
 *             "sandport-exec-1", cwd, argc, argv..., envc, env...
 *   response: frames of  u8 kind, u32 length, payload:
 *             'o' stdout bytes   'e' stderr bytes
 *             'x' exit: u32 exit code (128+N when killed by signal N)
 *             'f' failure to start: a message
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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "sandport-exec-1"
#define MAX_REQUEST (4 << 20)
#define MAX_STRINGS 65536
#define DRAIN_GRACE_MS 250

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

/* Forward what is readable on fd as frames; returns 0 at EOF, 1 if more may come. */
static int pump(int fd, int sock, char kind) {
    char buf[65536];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
    if (n <= 0) return 0;
    if (send_frame(sock, kind, buf, (uint32_t)n) < 0) return -1;
    return 1;
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
    if (n < 3 || strcmp(strs[0], MAGIC) != 0) {
        errno = EPROTO;
        fail(sock, "bad request");
        return;
    }
    const char *cwd = strs[1];
    long argc = strtol(strs[2], NULL, 10);
    if (argc < 1 || 3 + argc >= n) { errno = EPROTO; fail(sock, "bad request"); return; }
    char **argv = strs + 3;
    long envc = strtol(strs[3 + argc], NULL, 10);
    if (envc < 0 || 4 + argc + envc != n) { errno = EPROTO; fail(sock, "bad request"); return; }
    char **envp = strs + 4 + argc;
    /* argv and envp must be NULL-terminated: copy them into arrays with room for it. */
    char **args = calloc((size_t)argc + 1, sizeof *args);
    char **envs = calloc((size_t)envc + 1, sizeof *envs);
    if (!args || !envs) return;
    memcpy(args, argv, (size_t)argc * sizeof *args);
    memcpy(envs, envp, (size_t)envc * sizeof *envs);

    int out[2], err[2], ready[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(ready, O_CLOEXEC) < 0) {
        fail(sock, "pipe");
        return;
    }
    pid_t pid = fork();
    if (pid < 0) { fail(sock, "fork"); return; }
    if (pid == 0) {
        setsid();
        signal(SIGPIPE, SIG_DFL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        int report[2] = {1, 0}; /* {stage: 1 chdir, 2 exec; errno} */
        if (chdir(cwd) < 0) {
            report[1] = errno;
            write_all(ready[1], report, sizeof report);
            _exit(127);
        }
        execve(args[0], args, envs);
        report[0] = 2;
        report[1] = errno;
        write_all(ready[1], report, sizeof report);
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    close(ready[1]);
    int report[2];
    if (read(ready[0], report, sizeof report) == (ssize_t)sizeof report) {
        errno = report[1];
        waitpid(pid, NULL, 0);
        fail(sock, report[0] == 1 ? "chdir" : "exec");
        return;
    }
    close(ready[0]);

    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    int out_open = 1, err_open = 1, exited = 0, status = 0;
    long drain_deadline = 0;
    for (;;) {
        struct pollfd fds[4] = {
            {out_open ? out[0] : -1, POLLIN, 0},
            {err_open ? err[0] : -1, POLLIN, 0},
            {sock, POLLIN | POLLRDHUP, 0},
            {exited ? -1 : pidfd, POLLIN, 0},
        };
        /* After the exit, background children may hold the pipes: drain briefly.
         * Without a pidfd (kernel < 5.3), poll for the exit every 50 ms. */
        int timeout = pidfd < 0 ? 50 : -1;
        if (exited) {
            long left = drain_deadline - now_ms();
            if (left <= 0) break;
            timeout = (int)left;
        }
        int ready_count = poll(fds, 4, timeout);
        if (ready_count < 0 && errno == EINTR) continue;
        if (ready_count == 0 && exited) break; /* drain grace over */
        if (fds[2].revents) {
            char probe;
            ssize_t r = recv(sock, &probe, 1, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                kill(-pid, SIGKILL); /* client gone: the command goes too */
                if (!exited) waitpid(pid, NULL, 0);
                return;
            }
        }
        if (fds[0].revents) { int r = pump(out[0], sock, 'o'); if (r < 0) goto gone; out_open = r; }
        if (fds[1].revents) { int r = pump(err[0], sock, 'e'); if (r < 0) goto gone; err_open = r; }
        if (!exited && (fds[3].revents || pidfd < 0)) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = 1;
                drain_deadline = now_ms() + DRAIN_GRACE_MS;
            }
        }
        if (exited && !out_open && !err_open) break;
    }
    uint32_t code = WIFEXITED(status) ? (uint32_t)WEXITSTATUS(status)
                                      : 128u + (uint32_t)WTERMSIG(status);
    uint32_t be_code = htonl(code);
    send_frame(sock, 'x', &be_code, 4);
    return;
gone:
    kill(-pid, SIGKILL);
    if (!exited) waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: sandport-agent PORT HOST_IP\n");
        return 2;
    }
    int port = atoi(argv[1]);
    struct in_addr peer;
    if (inet_pton(AF_INET, argv[2], &peer) != 1) {
        fprintf(stderr, "sandport-agent: bad HOST_IP %s\n", argv[2]);
        return 2;
    }
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
