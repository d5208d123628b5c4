/* log.c - see log.h. One fprintf per line and output so concurrent threads do not interleave
 * lines.
 *
 * Two outputs, as RabbitMQ's log.console / log.file: the console (stderr; containers join it to
 * stdout) and an optional file opened in append mode, each with its own level. log_get_level is
 * the lower of the enabled outputs' levels, so a line no output wants costs one comparison. */
#include "broker/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum log_level console_level = LOG_INFO;
static bool console_on = true;
static FILE *log_file;
static enum log_level file_level = LOG_INFO;
static enum log_level current_level = LOG_INFO; /* the lowest level an output takes */

static void update_level(void)
{
    enum log_level lowest = LOG_NONE;
    if (console_on && console_level < lowest) lowest = console_level;
    if (log_file && file_level < lowest) lowest = file_level;
    current_level = lowest;
}

void log_set_level(enum log_level level)
{
    console_level = file_level = level;
    update_level();
}

enum log_level log_get_level(void) { return current_level; }

void log_set_console(bool on, enum log_level level)
{
    console_on = on;
    console_level = level;
    update_level();
}

int log_open_file(const char *path, enum log_level level, char *err, size_t errlen)
{
    FILE *f = fopen(path, "a");
    if (!f) {
        snprintf(err, errlen, "cannot open log file %s: %s", path, strerror(errno));
        return -1;
    }
    setvbuf(f, NULL, _IOLBF, 0); /* a line is on disk (in the page cache) once logged */
    if (log_file) fclose(log_file);
    log_file = f;
    file_level = level;
    update_level();
    return 0;
}

int log_level_parse(const char *name)
{
    static const struct { const char *name; enum log_level level; } names[] = {
        {"debug", LOG_DEBUG}, {"info", LOG_INFO}, {"warning", LOG_WARN}, {"warn", LOG_WARN},
        {"error", LOG_ERROR}, {"critical", LOG_ERROR}, {"none", LOG_NONE},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i].name, name) == 0) return (int)names[i].level;
    return -1;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *const level_names[] = {"debug", "info", "warning", "error", "none"};
    if (level < current_level) return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char line[2048];
    int n = (int)strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03ld [%s] ", now.tv_nsec / 1000000,
                  level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (console_on && level >= console_level) fprintf(stderr, "%s\n", line);
    if (log_file && level >= file_level) fprintf(log_file, "%s\n", line);
}
