/* net.h - the broker's listeners: TCP and TLS connections on a libev loop.
 *
 * The network layer owns sockets, TLS sessions and byte buffers; it knows nothing about AMQP. The protocol
 * layer sees a connection as a stream of plaintext bytes in (on_data), a queue of plaintext bytes out
 * (net_write), a back-pressure signal (on_drain) and a single end-of-life notification (on_close).
 *
 * Everything here runs on the loop thread; no function is thread-safe. Names are prefixed net_.
 * net_listen sets SIGPIPE to ignored (if it was at its default): OpenSSL writes to sockets with write(2), and a
 * peer that vanishes must produce EPIPE, not kill the broker. */
#ifndef WARREN_NET_H
#define WARREN_NET_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

typedef struct net_conn net_conn_t;
typedef struct net_listener net_listener_t;

/* Callbacks into the protocol layer. All run on the loop thread. */
typedef struct {
    /* Plaintext bytes arrived (decrypted for TLS). The data is only valid during the call; the protocol layer
     * copies what it keeps. */
    void (*on_data)(void *ud, const uint8_t *data, size_t len);
    /* The output buffer drained below the low-water mark after having been above the high-water mark
     * (used for back-pressure: resume delivering). May be NULL. */
    void (*on_drain)(void *ud);
    /* The connection is gone (peer closed, I/O error, TLS error, or net_close finished). Called exactly once;
     * after it returns the net_conn_t is freed: the protocol layer must drop its pointer. */
    void (*on_close)(void *ud);
} net_handler_t;

/* accept callback: a new connection (already accepted; for TLS the handshake runs transparently after this:
 * on_data will only be called with decrypted data). Must call net_conn_set_handler before returning. */
typedef void (*net_accept_cb)(void *arg, net_conn_t *conn);

/* Listens on host:port ("0.0.0.0", "::", "127.0.0.1" ... ; host NULL or "" = all IPv4+IPv6 if possible).
 * tls_ctx NULL = plain TCP. SO_REUSEADDR, non-blocking, TCP_NODELAY on accepted sockets. Returns NULL and fills
 * err on failure (e.g. "cannot listen on 0.0.0.0:5672: Address already in use"). The listener takes a
 * reference on tls_ctx (SSL_CTX_up_ref); the caller keeps its own. */
net_listener_t *net_listen(struct ev_loop *loop, const char *host, int port, SSL_CTX *tls_ctx,
                           net_accept_cb cb, void *arg, char *err, size_t errlen);
int net_listener_port(const net_listener_t *l);     /* the bound port (useful when port 0 was asked) */
/* Stops accepting and frees the listener. Connections already accepted live on independently. */
void net_listener_close(net_listener_t *l);

void net_conn_set_handler(net_conn_t *c, const net_handler_t *h, void *ud);
/* Queues plaintext bytes for sending (encrypts for TLS). Never blocks; the output buffer grows as needed. Writes
 * are attempted opportunistically at the end of the loop iteration (coalescing many small writes into one
 * send/SSL_write). Ignored after net_close. */
void net_write(net_conn_t *c, const void *data, size_t len);
size_t net_out_pending(const net_conn_t *c);        /* bytes queued and not yet sent */
void net_set_watermarks(net_conn_t *c, size_t high, size_t low);  /* defaults 1 MiB / 256 KiB; on_drain uses them */
/* Stop/resume reading from the socket (back-pressure or while the protocol waits). */
void net_pause_reading(net_conn_t *c, bool paused);
/* Closes: if flush is true, first sends what is queued (bounded by a 1 s timeout), then shuts down; on_close is
 * called afterwards (asynchronously, never from inside net_close itself). No further on_data after net_close.
 * Calling it again is harmless. */
void net_close(net_conn_t *c, bool flush);
/* Peer and local addresses as text ("127.0.0.1", "::1") and ports; whether the peer is loopback (127.0.0.0/8,
 * ::1, ::ffff:127.x.x.x). */
const char *net_peer_host(const net_conn_t *c);
int net_peer_port(const net_conn_t *c);
const char *net_local_host(const net_conn_t *c);
int net_local_port(const net_conn_t *c);
bool net_peer_is_loopback(const net_conn_t *c);
bool net_is_tls(const net_conn_t *c);
const char *net_tls_version(const net_conn_t *c);   /* e.g. "TLSv1.3" or NULL (plain TCP / handshake pending) */

/* TLS server context from PEM files (cacertfile may be NULL; verify_peer: request a client cert and verify it
 * against cacertfile; fail_if_no_peer_cert: refuse clients without one). TLS 1.2+ only. NULL + err on failure.
 * Free with SSL_CTX_free. */
SSL_CTX *net_tls_server_ctx(const char *certfile, const char *keyfile, const char *cacertfile,
                            bool verify_peer, bool fail_if_no_peer_cert, char *err, size_t errlen);
/* Generates a self-signed certificate (EC P-256, CN=hostname, SAN DNS:localhost IP:127.0.0.1, 10 years)
 * and its key into the two paths (creating the directory if needed, key mode 0600), unless both files already
 * exist. Returns 0 or -1 with err. */
int net_tls_make_self_signed(const char *certfile, const char *keyfile, char *err, size_t errlen);
/* Helper: empties OpenSSL's per-thread error queue into buf as text (the earliest, i.e. root-cause, error;
 * "unknown TLS error" when the queue was empty). */
void net_tls_error_string(char *buf, size_t len);

#endif
