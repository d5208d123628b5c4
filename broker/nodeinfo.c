/* nodeinfo.c - this node's resource figures as the management API reports them for a node
 * (mem_used, disk_free, fd_used, uptime...), built here in broker/ so that any node can answer
 * for itself when another node's API gathers the cluster's /api/nodes (connreg.list with
 * "node": true). Reads /proc and statvfs; no state of its own. Prefix: ni_. */
#include "broker/nodeinfo.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

static uint64_t ni_disk_free(const char *dir)
{
    struct statvfs st;
    return statvfs(dir, &st) == 0 ? (uint64_t)st.f_bavail * st.f_frsize : 0;
}

static int ni_fd_used(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n > 0 ? n - 1 : 0; /* minus the one opendir holds */
}

/* Milliseconds since this process started: the system's uptime minus the process's start time
 * (field 22 of /proc/self/stat, in clock ticks after boot). */
static int64_t ni_uptime_ms(void)
{
    double up = 0;
    FILE *f = fopen("/proc/uptime", "r");
    if (!f) return 0;
    int ok = fscanf(f, "%lf", &up) == 1;
    fclose(f);
    f = fopen("/proc/self/stat", "r");
    if (!f || !ok) {
        if (f) fclose(f);
        return 0;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long start = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                     &start) != 1)
        return 0;
    double ms = (up - (double)start / (double)sysconf(_SC_CLK_TCK)) * 1000.0;
    return ms > 0 ? (int64_t)ms : 0;
}

void ni_add_figures(broker_t *b, cJSON *o)
{
    cJSON_AddNumberToObject(o, "mem_used", (double)br_memory_used());
    cJSON_AddNumberToObject(o, "mem_limit", (double)br_memory_limit(b));
    cJSON_AddBoolToObject(o, "mem_alarm", (b->alarms & BR_ALARM_MEMORY) != 0);
    cJSON_AddNumberToObject(o, "disk_free", (double)ni_disk_free(b->cfg->data_dir));
    cJSON_AddNumberToObject(o, "disk_free_limit", (double)b->cfg->disk_free_limit_absolute);
    cJSON_AddBoolToObject(o, "disk_free_alarm", (b->alarms & BR_ALARM_DISK) != 0);
    struct rlimit rl;
    cJSON_AddNumberToObject(o, "fd_used", ni_fd_used());
    cJSON_AddNumberToObject(o, "fd_total", getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (double)rl.rlim_cur : 0);
    cJSON_AddNumberToObject(o, "uptime", (double)ni_uptime_ms());
    cJSON_AddNumberToObject(o, "processors", (double)sysconf(_SC_NPROCESSORS_ONLN));
    char pid[24];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    cJSON_AddStringToObject(o, "os_pid", pid);
    cJSON_AddStringToObject(o, "rates_mode", "basic");
    /* persistence counters, RabbitMQ's names: messages and index entries written (a message
     * acknowledged before its batch went to disk is never written: queue.c's write elision) */
    cJSON_AddNumberToObject(o, "msg_store_write_count", (double)b->stat_msg_store_writes);
    cJSON_AddNumberToObject(o, "queue_index_write_count", (double)b->stat_index_writes);
    if (b->store) {
        store_stats_t st;
        store_get_stats(b->store, &st);
        cJSON_AddNumberToObject(o, "io_write_count", (double)st.writes);
        cJSON_AddNumberToObject(o, "io_write_bytes", (double)st.bytes);
        cJSON_AddNumberToObject(o, "io_sync_count", (double)st.syncs);
    }
}
