/* alarm.c - resource alarms, as RabbitMQ's vm_memory_high_watermark and disk_free_limit.
 *
 * Memory use is the process's resident set; the limit is the absolute watermark when set,
 * else the relative one times physical memory. Free disk space is that of the data directory's
 * file system. The protocol adapters poll br_check_alarms() and block publishing connections
 * while any alarm is in effect (connection.blocked / connection.unblocked in AMQP 0-9-1). */
#include "broker/broker.h"
#include "broker/log.h"

#include <malloc.h>
#include <stdio.h>
#include <sys/statvfs.h>
#include <unistd.h>

uint64_t br_memory_used(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

uint64_t br_memory_limit(const broker_t *b)
{
    if (b->cfg->vm_memory_high_watermark_absolute) return b->cfg->vm_memory_high_watermark_absolute;
    double total = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    return (uint64_t)(total * b->cfg->vm_memory_high_watermark_relative);
}

static uint64_t disk_free(const char *dir)
{
    struct statvfs st;
    if (statvfs(dir, &st) != 0) return UINT64_MAX;
    return (uint64_t)st.f_bavail * (uint64_t)st.f_frsize;
}

unsigned br_check_alarms(broker_t *b)
{
    unsigned now = 0;
    uint64_t limit = br_memory_limit(b);
    /* Before declaring (or keeping) a memory alarm, give freed heap back to the system. */
    if (limit && br_memory_used() > limit) malloc_trim(0);
    if (limit && br_memory_used() > limit) now |= BR_ALARM_MEMORY;
    if (disk_free(b->cfg->data_dir) < b->cfg->disk_free_limit_absolute) now |= BR_ALARM_DISK;
    if (now != b->alarms) {
        if ((now & BR_ALARM_MEMORY) != (b->alarms & BR_ALARM_MEMORY))
            log_warn("memory resource limit alarm %s (used %llu, limit %llu)",
                     now & BR_ALARM_MEMORY ? "set" : "cleared", (unsigned long long)br_memory_used(),
                     (unsigned long long)limit);
        if ((now & BR_ALARM_DISK) != (b->alarms & BR_ALARM_DISK))
            log_warn("disk resource limit alarm %s (free %llu, limit %llu)", now & BR_ALARM_DISK ? "set" : "cleared",
                     (unsigned long long)disk_free(b->cfg->data_dir),
                     (unsigned long long)b->cfg->disk_free_limit_absolute);
        b->alarms = now;
    }
    return now;
}

const char *br_alarm_reason(unsigned alarms)
{
    if ((alarms & BR_ALARM_DISK) && (alarms & BR_ALARM_MEMORY)) return "low on disk & memory";
    if (alarms & BR_ALARM_DISK) return "low on disk";
    return "low on memory";
}
