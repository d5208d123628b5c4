/* log.h - leveled, timestamped log lines to the console (stderr; stdout in containers via
 * redirection) and optionally a file (RabbitMQ's log.console / log.file keys).
 *
 * Format: "2026-11-22 01:02:03.456 [info] message". The levels are set once from config at
 * startup; log_msg() is cheap when no output wants the level. */
#ifndef WARREN_LOG_H
#define WARREN_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_NONE };

#include <stdbool.h>
#include <stddef.h>

/* Sets the level of every output. */
void log_set_level(enum log_level level);
/* The lowest level some enabled output takes (lines below it are dropped at once). */
enum log_level log_get_level(void);
/* log.console = false silences the console; log.console.level is its level. */
void log_set_console(bool on, enum log_level level);
/* log.file = PATH: lines are appended to PATH too, at their own level. -1 with err when the
 * file cannot be opened. */
int log_open_file(const char *path, enum log_level level, char *err, size_t errlen);
/* Parses "debug", "info", "warning"/"warn", "error", "none"; returns -1 when unknown. */
int log_level_parse(const char *name);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_get_level() <= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
