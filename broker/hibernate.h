/* hibernate.h - an idle node gives back memory it no longer touches (see hibernate.c). */
#ifndef WARREN_HIBERNATE_H
#define WARREN_HIBERNATE_H

#include <stddef.h>

typedef struct broker broker_t;

/* Trims once start-up is over, then after each burst of traffic followed by 30 s of quiet.
 * WARREN_NO_HIBERNATE in the environment turns it off (to measure without it). */
void hib_start(broker_t *b);
void hib_stop(void);
/* Heap trim + hib_drop_code_pages, now. */
void hib_trim(void);
/* Drops the clean read-only pages of the executable and its shared libraries from the page
 * tables (they stay in the page cache); returns the bytes of the mappings so advised. */
size_t hib_drop_code_pages(void);

#endif
