/* test_config.c - configuration: defaults, every key, listener address forms, collection
 * replace/remove semantics, file syntax (comments, whitespace, CRLF), error texts with file
 * and line, and environment overrides beating the file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "broker/config.h"
#include "broker/log.h"

static char err[512];

static void set_ok(cfg_t *c, const char *key, const char *value) {
    if (cfg_set(c, key, value, err, sizeof err) != 0) fail_msg("cfg_set(%s, %s): %s", key, value, err);
}

static void set_bad(cfg_t *c, const char *key, const char *value) {
    err[0] = '\0';
    if (cfg_set(c, key, value, err, sizeof err) == 0) fail_msg("cfg_set(%s, %s) accepted", key, value);
    assert_true(strlen(err) > 0);
}

/* Writes text to a fresh temporary file; returns its path (static buffer). */
static const char *write_temp(const char *text) {
    static char path[64];
    strcpy(path, "/tmp/warren-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

static void test_defaults(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    assert_int_equal(c.n_tcp, 1);
    assert_string_equal(c.tcp[0].host, "");
    assert_int_equal(c.tcp[0].port, 5672);
    assert_int_equal(c.n_ssl, 1);
    assert_int_equal(c.ssl[0].port, 5671);
    assert_false(c.ssl_verify_peer);
    assert_false(c.ssl_fail_if_no_peer_cert);
    assert_string_equal(c.ssl_certfile, "");
    assert_string_equal(c.default_user, "guest");
    assert_string_equal(c.default_pass, "guest");
    assert_string_equal(c.default_vhost, "/");
    assert_int_equal(c.n_default_user_tags, 1);
    assert_string_equal(c.default_user_tags[0], "administrator");
    assert_string_equal(c.default_perm_configure, ".*");
    assert_string_equal(c.default_perm_read, ".*");
    assert_string_equal(c.default_perm_write, ".*");
    assert_int_equal(c.n_loopback_users, 1);
    assert_string_equal(c.loopback_users[0], "guest");
    assert_int_equal(c.heartbeat, 60);
    assert_int_equal(c.frame_max, 131072);
    assert_int_equal(c.channel_max, 2047);
    assert_int_equal(c.max_message_size, 16777216);
    assert_string_equal(c.data_dir, "./data");
    assert_int_equal(c.log_level, LOG_INFO);
    assert_int_equal(c.consumer_timeout, 1800000);
    assert_string_equal(c.load_definitions, "");
    assert_memory_equal(c.node_name, "warren@", 7);
    assert_true(strlen(c.node_name) > 7);
    assert_null(strchr(c.node_name + 7, '.'));
    assert_int_equal(c.vm_memory_high_watermark_absolute, 0);
    assert_true(c.vm_memory_high_watermark_relative == 0.6);
    assert_int_equal(c.disk_free_limit_absolute, 50000000);
    assert_string_equal(c.cluster_name, "");
    assert_int_equal(c.mgmt_port, 15672);
    assert_int_equal(c.mqtt_port, 1883);
    assert_int_equal(c.stomp_port, 61613);
}

static void test_every_key(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    set_ok(&c, "ssl_options.certfile", "/etc/warren/cert.pem");
    set_ok(&c, "ssl_options.keyfile", "/etc/warren/key.pem");
    set_ok(&c, "ssl_options.cacertfile", "/etc/warren/ca.pem");
    set_ok(&c, "ssl_options.verify", "verify_peer");
    set_ok(&c, "ssl_options.fail_if_no_peer_cert", "true");
    set_ok(&c, "default_user", "admin");
    set_ok(&c, "default_pass", "s3cr3t");
    set_ok(&c, "default_vhost", "prod");
    set_ok(&c, "default_permissions.configure", "^$");
    set_ok(&c, "default_permissions.read", "^amq\\.");
    set_ok(&c, "default_permissions.write", "x");
    set_ok(&c, "heartbeat", "0");
    set_ok(&c, "frame_max", "4096");
    set_ok(&c, "channel_max", "100");
    set_ok(&c, "max_message_size", "536870912");
    set_ok(&c, "data_dir", "/var/lib/warren");
    set_ok(&c, "log.level", "debug");
    set_ok(&c, "consumer_timeout", "900000");
    set_ok(&c, "load_definitions", "/etc/warren/definitions.json");
    set_ok(&c, "node_name", "warren@node1");
    set_ok(&c, "disk_free_limit.absolute", "2GB");
    set_ok(&c, "cluster_name", "east");
    set_ok(&c, "management.tcp.port", "15673");
    set_ok(&c, "mqtt.listeners.tcp.default", "1884");
    set_ok(&c, "stomp.listeners.tcp.default", "61614");
    assert_string_equal(c.ssl_certfile, "/etc/warren/cert.pem");
    assert_string_equal(c.ssl_keyfile, "/etc/warren/key.pem");
    assert_string_equal(c.ssl_cacertfile, "/etc/warren/ca.pem");
    assert_true(c.ssl_verify_peer);
    assert_true(c.ssl_fail_if_no_peer_cert);
    assert_string_equal(c.default_user, "admin");
    assert_string_equal(c.default_pass, "s3cr3t");
    assert_string_equal(c.default_vhost, "prod");
    assert_string_equal(c.default_perm_configure, "^$");
    assert_string_equal(c.default_perm_read, "^amq\\.");
    assert_string_equal(c.default_perm_write, "x");
    assert_int_equal(c.heartbeat, 0);
    assert_int_equal(c.frame_max, 4096);
    assert_int_equal(c.channel_max, 100);
    assert_int_equal(c.max_message_size, 536870912);
    assert_string_equal(c.data_dir, "/var/lib/warren");
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.consumer_timeout, 900000);
    assert_string_equal(c.load_definitions, "/etc/warren/definitions.json");
    assert_string_equal(c.node_name, "warren@node1");
    assert_int_equal(c.disk_free_limit_absolute, 2000000000ULL);
    assert_string_equal(c.cluster_name, "east");
    assert_int_equal(c.mgmt_port, 15673);
    assert_int_equal(c.mqtt_port, 1884);
    assert_int_equal(c.stomp_port, 61614);

    set_ok(&c, "management.listener.port", "15999");
    assert_int_equal(c.mgmt_port, 15999);
    set_ok(&c, "ssl_options.verify", "verify_none");
    assert_false(c.ssl_verify_peer);
    set_ok(&c, "ssl_options.fail_if_no_peer_cert", "false");
    assert_false(c.ssl_fail_if_no_peer_cert);
    set_ok(&c, "frame_max", "0");
    assert_int_equal(c.frame_max, 0);
    set_ok(&c, "frame_max", "4294967295");
    assert_int_equal(c.frame_max, UINT32_MAX);
    set_ok(&c, "log.console.level", "warning");
    assert_int_equal(c.log_level, LOG_WARN);
    set_ok(&c, "log.file.level", "error");          /* the file's own level */
    assert_int_equal(c.log_file_level, LOG_ERROR);
    assert_int_equal(c.log_level, LOG_WARN);
    set_ok(&c, "log.console", "false");
    assert_false(c.log_console);
    set_ok(&c, "log.file", "/var/log/warren.log");
    assert_string_equal(c.log_file, "/var/log/warren.log");
    set_ok(&c, "log.file", "false");
    assert_string_equal(c.log_file, "");
    set_ok(&c, "log.level", "none");
    assert_int_equal(c.log_level, LOG_NONE);
    set_ok(&c, "log.level", "notice");
    assert_int_equal(c.log_level, LOG_INFO);
    set_ok(&c, "load_definitions", "");            /* strings may be cleared via cfg_set */
    assert_string_equal(c.load_definitions, "");
}

static void test_memory_and_units(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    set_ok(&c, "vm_memory_high_watermark.absolute", "1073741824");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 1073741824ULL);
    set_ok(&c, "vm_memory_high_watermark.absolute", "512MB");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 512000000ULL);
    set_ok(&c, "vm_memory_high_watermark.absolute", "1GiB");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 1073741824ULL);
    set_ok(&c, "vm_memory_high_watermark.absolute", "2Gi");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 2147483648ULL);
    set_ok(&c, "vm_memory_high_watermark.absolute", "1gb");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 1000000000ULL);
    set_ok(&c, "vm_memory_high_watermark.absolute", "100k");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 100000ULL);
    set_ok(&c, "vm_memory_high_watermark.absolute", "3TB");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 3000000000000ULL);
    set_ok(&c, "vm_memory_high_watermark.absolute", "64MiB");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 67108864ULL);
    /* relative and absolute are one setting: the last one wins. */
    set_ok(&c, "vm_memory_high_watermark.relative", "0.4");
    assert_true(c.vm_memory_high_watermark_relative == 0.4);
    assert_int_equal(c.vm_memory_high_watermark_absolute, 0);
    set_bad(&c, "vm_memory_high_watermark.relative", "1.5");
    set_bad(&c, "vm_memory_high_watermark.relative", "-0.1");
    set_bad(&c, "vm_memory_high_watermark.relative", "abc");
    set_bad(&c, "vm_memory_high_watermark.relative", "0.4x");
    set_bad(&c, "vm_memory_high_watermark.relative", "nan");
    set_bad(&c, "vm_memory_high_watermark.absolute", "0");
    set_bad(&c, "vm_memory_high_watermark.absolute", "1.5GB");
    set_bad(&c, "vm_memory_high_watermark.absolute", "GB");
    set_bad(&c, "vm_memory_high_watermark.absolute", "10XB");
    set_bad(&c, "vm_memory_high_watermark.absolute", "10GBB");
    set_bad(&c, "vm_memory_high_watermark.absolute", "-5");
    set_bad(&c, "disk_free_limit.absolute", "99999999999999999999");
    set_bad(&c, "disk_free_limit.absolute", "99999999999999PB");
    set_ok(&c, "disk_free_limit.absolute", "50000000");
    assert_int_equal(c.disk_free_limit_absolute, 50000000);
}

static void test_listeners(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    set_ok(&c, "listeners.tcp.default", "5673");   /* replaces the built-in default */
    assert_int_equal(c.n_tcp, 1);
    assert_int_equal(c.tcp[0].port, 5673);
    assert_string_equal(c.tcp[0].host, "");
    set_ok(&c, "listeners.tcp.local", "127.0.0.1:5674");
    set_ok(&c, "listeners.tcp.v6", "[::1]:5675");
    set_ok(&c, "listeners.tcp.v6b", "::1:5676");     /* RabbitMQ's unbracketed form */
    assert_int_equal(c.n_tcp, 4);
    assert_string_equal(c.tcp[1].host, "127.0.0.1");
    assert_int_equal(c.tcp[1].port, 5674);
    assert_string_equal(c.tcp[2].host, "::1");
    assert_int_equal(c.tcp[2].port, 5675);
    assert_string_equal(c.tcp[3].host, "::1");
    assert_int_equal(c.tcp[3].port, 5676);
    set_ok(&c, "listeners.tcp.local", "localhost:6000");   /* same name: replaced in place */
    assert_int_equal(c.n_tcp, 4);
    assert_string_equal(c.tcp[1].host, "localhost");
    assert_int_equal(c.tcp[1].port, 6000);
    set_bad(&c, "listeners.tcp.fifth", "7000");
    assert_non_null(strstr(err, "too many listeners"));
    set_ok(&c, "listeners.tcp", "none");
    assert_int_equal(c.n_tcp, 0);
    set_ok(&c, "listeners.tcp.again", "0.0.0.0:5672");
    assert_int_equal(c.n_tcp, 1);
    assert_string_equal(c.tcp[0].host, "0.0.0.0");
    assert_string_equal(c.tcp[0].name, "again");

    set_ok(&c, "listeners.ssl.default", "[fe80::1%eth0]:5671");
    assert_int_equal(c.n_ssl, 1);
    assert_string_equal(c.ssl[0].host, "fe80::1%eth0");
    set_ok(&c, "listeners.ssl", "none");
    assert_int_equal(c.n_ssl, 0);

    const char *bad[] = { "0", "65536", "abc", "host:", ":5672", "[::1]5672", "[::1", "[]:5672",
                          "host:port", "5672x", "ho st:5672", "-1", "" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) set_bad(&c, "listeners.tcp.x", bad[i]);
    set_bad(&c, "listeners.tcp", "5672");
    set_bad(&c, "listeners.tcp.", "5672");            /* a family key needs a name */
    assert_non_null(strstr(err, "unknown configuration key"));
    char longhost[200];
    memset(longhost, 'h', 100);
    strcpy(longhost + 100, ":5672");
    set_bad(&c, "listeners.tcp.x", longhost);
}

static void test_users_and_tags(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    set_ok(&c, "loopback_users.guest", "false");      /* the usual "allow guest remotely" */
    assert_int_equal(c.n_loopback_users, 0);
    set_ok(&c, "loopback_users.alice", "true");
    set_ok(&c, "loopback_users.bob", "true");
    set_ok(&c, "loopback_users.alice", "true");       /* no duplicates */
    assert_int_equal(c.n_loopback_users, 2);
    set_ok(&c, "loopback_users.alice", "false");
    assert_int_equal(c.n_loopback_users, 1);
    assert_string_equal(c.loopback_users[0], "bob");
    set_ok(&c, "loopback_users", "none");
    assert_int_equal(c.n_loopback_users, 0);
    set_bad(&c, "loopback_users.bob", "yes");
    set_bad(&c, "loopback_users", "guest");

    cfg_defaults(&c);
    set_ok(&c, "loopback_users.carol", "true");       /* replaces the default guest */
    assert_int_equal(c.n_loopback_users, 1);
    assert_string_equal(c.loopback_users[0], "carol");

    set_ok(&c, "default_user_tags.management", "true");
    set_ok(&c, "default_user_tags.policymaker", "true");
    assert_int_equal(c.n_default_user_tags, 2);
    assert_string_equal(c.default_user_tags[0], "management");
    assert_string_equal(c.default_user_tags[1], "policymaker");
    set_ok(&c, "default_user_tags.management", "false");
    assert_int_equal(c.n_default_user_tags, 1);
    set_bad(&c, "default_user_tags.x", "1");
    for (int i = 0; i < 7; i++) {
        char key[64];
        snprintf(key, sizeof key, "default_user_tags.t%d", i);
        set_ok(&c, key, "true");
    }
    set_bad(&c, "default_user_tags.overflow", "true");
}

static void test_bad_values(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    set_bad(&c, "heartbeat", "abc");
    assert_string_equal(err, "invalid value 'abc' for 'heartbeat': expected an integer from 0 to 65535");
    set_bad(&c, "heartbeat", "-1");
    set_bad(&c, "heartbeat", "65536");
    set_bad(&c, "heartbeat", "1e3");
    set_bad(&c, "heartbeat", " 5");
    set_bad(&c, "heartbeat", "");
    set_bad(&c, "channel_max", "70000");
    set_bad(&c, "frame_max", "4095");
    set_bad(&c, "frame_max", "4294967296");
    set_bad(&c, "max_message_size", "536870913");
    set_bad(&c, "max_message_size", "0");
    set_bad(&c, "consumer_timeout", "0");
    set_bad(&c, "consumer_timeout", "99999999999999999999999");
    set_bad(&c, "ssl_options.verify", "yes");
    set_bad(&c, "ssl_options.fail_if_no_peer_cert", "TRUE");
    set_bad(&c, "log.level", "verbose");
    set_bad(&c, "management.tcp.port", "0");
    set_bad(&c, "mqtt.listeners.tcp.default", "1.2.3.4:1883");
    char big[600];
    memset(big, 'd', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    set_bad(&c, "data_dir", big);
    assert_non_null(strstr(err, "too long"));
    set_bad(&c, "no.such.key", "1");
    assert_string_equal(err, "unknown configuration key 'no.such.key'");
    set_bad(&c, "Heartbeat", "1");                    /* keys are case-sensitive */
    /* Failed sets leave the old value alone. */
    assert_int_equal(c.heartbeat, 60);
    assert_int_equal(c.frame_max, 131072);
    /* A tiny or missing error buffer is fine. */
    char tiny[8];
    assert_int_equal(cfg_set(&c, "heartbeat", "x", tiny, sizeof tiny), -1);
    assert_int_equal(strlen(tiny), 7);
    assert_int_equal(cfg_set(&c, "heartbeat", "x", NULL, 0), -1);
    assert_int_equal(cfg_set(&c, NULL, "x", err, sizeof err), -1);
}

static void test_file(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    const char *path = write_temp(
        "# Warren configuration\n"
        "\n"
        "   listeners.tcp.default = 5673   \n"
        "\tlisteners.tcp.local=127.0.0.1:5674\n"
        "heartbeat = 30 # inline comment\n"
        "loopback_users.guest = false\r\n"
        "   # indented comment\n"
        "data_dir = /var/lib/warren data\n"
        "default_user_tags.monitoring = true\n"
        "vm_memory_high_watermark.absolute = 2GB\n"
        "load_definitions = /etc/warren/defs.json");      /* no trailing newline */
    assert_int_equal(cfg_load_file(&c, path, err, sizeof err), 0);
    unlink(path);
    assert_int_equal(c.n_tcp, 2);
    assert_int_equal(c.tcp[0].port, 5673);
    assert_string_equal(c.tcp[1].host, "127.0.0.1");
    assert_int_equal(c.heartbeat, 30);
    assert_int_equal(c.n_loopback_users, 0);
    assert_string_equal(c.data_dir, "/var/lib/warren data");
    assert_int_equal(c.n_default_user_tags, 1);
    assert_string_equal(c.default_user_tags[0], "monitoring");
    assert_int_equal(c.vm_memory_high_watermark_absolute, 2000000000ULL);
    assert_string_equal(c.load_definitions, "/etc/warren/defs.json");
    /* Values not in the file keep what was there before. */
    assert_int_equal(c.channel_max, 2047);
    assert_int_equal(c.n_ssl, 1);
}

static void expect_file_error(const char *text, const char *want_fmt) {
    cfg_t c;
    cfg_defaults(&c);
    const char *path = write_temp(text);
    char want[512];
    snprintf(want, sizeof want, want_fmt, path);
    err[0] = '\0';
    assert_int_equal(cfg_load_file(&c, path, err, sizeof err), -1);
    unlink(path);
    assert_string_equal(err, want);
}

static void test_file_errors(void **state) {
    (void)state;
    expect_file_error("heartbeat = 10\n# c\nfoo.bar = 1\n", "unknown configuration key 'foo.bar' (%s line 3)");
    expect_file_error("\n\nheartbeat = abc\n",
                      "invalid value 'abc' for 'heartbeat': expected an integer from 0 to 65535 (%s line 3)");
    expect_file_error("heartbeat\n", "syntax error: expected 'key = value' (%s line 1)");
    expect_file_error("heartbeat = # nothing\n", "missing value for 'heartbeat' (%s line 1)");
    expect_file_error(" = 5\n", "syntax error: missing key before '=' (%s line 1)");
    expect_file_error("listeners.tcp.default = 70000\n",
                      "invalid value '70000' for 'listeners.tcp.default': expected PORT, HOST:PORT or "
                      "[IPv6]:PORT with a port from 1 to 65535 (%s line 1)");
    cfg_t c;
    cfg_defaults(&c);
    assert_int_equal(cfg_load_file(&c, "/nonexistent/warren.conf", err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open configuration file '/nonexistent/warren.conf'"));
    /* An error stops loading: later lines are not applied. */
    const char *path = write_temp("heartbeat = 5\nbogus = 1\nchannel_max = 9\n");
    assert_int_equal(cfg_load_file(&c, path, err, sizeof err), -1);
    unlink(path);
    assert_int_equal(c.heartbeat, 5);
    assert_int_equal(c.channel_max, 2047);
    /* A NUL byte is reported, not silently truncated. */
    char tmpl[] = "/tmp/warren-test-config-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "heartbeat = 5\0junk\n", 19), 19);
    close(fd);
    assert_int_equal(cfg_load_file(&c, tmpl, err, sizeof err), -1);
    unlink(tmpl);
    assert_non_null(strstr(err, "NUL byte"));
}

static void test_load_string(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    assert_int_equal(cfg_load_string(&c, "channel_max = 10\nheartbeat = 15\n", "inline", err, sizeof err), 0);
    assert_int_equal(c.channel_max, 10);
    assert_int_equal(c.heartbeat, 15);
    assert_int_equal(cfg_load_string(&c, "a = 1", "inline", err, sizeof err), -1);
    assert_string_equal(err, "unknown configuration key 'a' (inline line 1)");
    assert_int_equal(cfg_load_string(&c, "", "inline", err, sizeof err), 0);
    assert_int_equal(cfg_load_string(&c, NULL, "inline", err, sizeof err), 0);
}

static void test_cluster(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    assert_int_equal(c.n_cluster_nodes, 0);
    assert_int_equal(c.cluster_listener.port, 25672);
    assert_int_equal(c.cluster_peer_timeout, 5000);
    set_ok(&c, "cluster_formation.classic_config.nodes.3", "warren3@127.0.0.1:25674");
    set_ok(&c, "cluster_formation.classic_config.nodes.1", "warren1@node-a");
    set_ok(&c, "cluster_formation.classic_config.nodes.2", "warren2@127.0.0.1:25673");
    assert_int_equal(c.n_cluster_nodes, 3);
    assert_string_equal(c.cluster_nodes[0].name, "warren1@node-a");
    assert_string_equal(c.cluster_nodes[0].host, "node-a");
    assert_int_equal(c.cluster_nodes[0].port, 0);
    assert_string_equal(c.cluster_nodes[1].name, "warren2@127.0.0.1");
    assert_int_equal(c.cluster_nodes[1].port, 25673);
    assert_string_equal(c.cluster_nodes[2].host, "127.0.0.1");
    set_ok(&c, "cluster_formation.classic_config.nodes.2", "warren2@127.0.0.2"); /* replaces */
    assert_int_equal(c.n_cluster_nodes, 3);
    assert_string_equal(c.cluster_nodes[1].host, "127.0.0.2");
    set_bad(&c, "cluster_formation.classic_config.nodes.4", "warren1@node-a");
    set_bad(&c, "cluster_formation.classic_config.nodes.5", "no-at-sign");
    set_bad(&c, "cluster_formation.classic_config.nodes.5", "x@host:0");
    set_bad(&c, "cluster_formation.classic_config.nodes.x", "x@host");
    set_ok(&c, "cluster.listener.port", "25680");
    set_ok(&c, "cluster.listener.ip", "127.0.0.2");
    set_ok(&c, "cluster.cookie", "s3cret");
    set_ok(&c, "cluster.peer_timeout", "1500");
    assert_int_equal(c.cluster_listener.port, 25680);
    assert_string_equal(c.cluster_listener.host, "127.0.0.2");
    assert_string_equal(c.cluster_cookie, "s3cret");
    assert_int_equal(c.cluster_peer_timeout, 1500);
    set_bad(&c, "cluster.listener.port", "0");
}

static void test_env(void **state) {
    (void)state;
    cfg_t c;
    cfg_defaults(&c);
    const char *path = write_temp("heartbeat = 30\nlisteners.tcp.default = 5673\ndata_dir = /from/file\n");
    assert_int_equal(cfg_load_file(&c, path, err, sizeof err), 0);
    unlink(path);
    setenv("WARREN_HEARTBEAT", "45", 1);
    setenv("WARREN_LISTENERS_TCP_DEFAULT", "5680", 1);
    setenv("WARREN_LISTENERS_TCP_EXTRA", "127.0.0.1:5681", 1);
    setenv("WARREN_DATA_DIR", "/tmp/x", 1);
    setenv("WARREN_LOG_CONSOLE_LEVEL", "debug", 1);
    setenv("WARREN_VM_MEMORY_HIGH_WATERMARK_RELATIVE", "0.5", 1);
    setenv("WARREN_LOOPBACK_USERS_GUEST", "false", 1);
    setenv("WARREN_DEFAULT_USER_TAGS_MANAGEMENT", "true", 1);
    setenv("WARREN_MANAGEMENT_TCP_PORT", "15680", 1);
    setenv("WARREN_UNRELATED_SETTING", "whatever", 1);   /* not ours: ignored */
    assert_int_equal(cfg_apply_env(&c, err, sizeof err), 0);
    assert_int_equal(c.heartbeat, 45);                      /* env beats file */
    assert_string_equal(c.data_dir, "/tmp/x");
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_true(c.vm_memory_high_watermark_relative == 0.5);
    assert_int_equal(c.n_loopback_users, 0);
    assert_int_equal(c.n_default_user_tags, 1);
    assert_string_equal(c.default_user_tags[0], "management");
    assert_int_equal(c.mgmt_port, 15680);
    assert_int_equal(c.n_tcp, 2);
    assert_string_equal(c.tcp[0].name, "default");
    assert_int_equal(c.tcp[0].port, 5680);                  /* same name as in the file: replaced */
    assert_string_equal(c.tcp[1].name, "extra");
    assert_string_equal(c.tcp[1].host, "127.0.0.1");

    setenv("WARREN_FRAME_MAX", "12", 1);
    assert_int_equal(cfg_apply_env(&c, err, sizeof err), -1);
    assert_string_equal(err, "invalid value '12' for 'frame_max': expected 0 or an integer from 4096 to "
                             "4294967295 (environment variable WARREN_FRAME_MAX)");
    unsetenv("WARREN_FRAME_MAX");
    setenv("WARREN_LISTENERS_SSL_MAIN", "bad", 1);
    assert_int_equal(cfg_apply_env(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "(environment variable WARREN_LISTENERS_SSL_MAIN)"));
    assert_non_null(strstr(err, "'listeners.ssl.main'"));
    unsetenv("WARREN_LISTENERS_SSL_MAIN");
    setenv("WARREN_LISTENERS_TCP", "none", 1);
    unsetenv("WARREN_LISTENERS_TCP_DEFAULT");
    unsetenv("WARREN_LISTENERS_TCP_EXTRA");
    assert_int_equal(cfg_apply_env(&c, err, sizeof err), 0);
    assert_int_equal(c.n_tcp, 0);

    const char *vars[] = { "WARREN_HEARTBEAT", "WARREN_DATA_DIR", "WARREN_LOG_CONSOLE_LEVEL",
                           "WARREN_VM_MEMORY_HIGH_WATERMARK_RELATIVE", "WARREN_LOOPBACK_USERS_GUEST",
                           "WARREN_DEFAULT_USER_TAGS_MANAGEMENT", "WARREN_MANAGEMENT_TCP_PORT",
                           "WARREN_UNRELATED_SETTING", "WARREN_LISTENERS_TCP" };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);
    /* With nothing set, env changes nothing. */
    cfg_t d, e;
    cfg_defaults(&d);
    e = d;
    assert_int_equal(cfg_apply_env(&e, err, sizeof err), 0);
    assert_memory_equal(&d, &e, sizeof d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_memory_and_units),
        cmocka_unit_test(test_listeners),
        cmocka_unit_test(test_users_and_tags),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_load_string),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_cluster),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
