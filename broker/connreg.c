/* connreg.c - the node's registry of client connections (see connreg.h).
 *
 * A doubly linked list of entries the protocol adapters own; adding and removing are O(1), so
 * accepting and closing connections cost nothing noticeable. Readers (warrenctl, the management
 * API) refresh the figures they show through each owner's describe callback. */
#include "broker/connreg.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static connreg_entry_t *head;
static size_t count;

void connreg_add(connreg_entry_t *e)
{
    e->prev = NULL;
    e->next = head;
    if (head) head->prev = e;
    head = e;
    count++;
}

void connreg_remove(connreg_entry_t *e)
{
    if (e->prev) e->prev->next = e->next;
    else if (head == e) head = e->next;
    else return; /* never added (or removed already) */
    if (e->next) e->next->prev = e->prev;
    e->prev = e->next = NULL;
    count--;
    free(e->chan_rates); /* connreg_api.c's per-channel samples */
    e->chan_rates = NULL;
    e->n_chan_rates = 0;
}

connreg_entry_t *connreg_refresh(void)
{
    for (connreg_entry_t *e = head; e; e = e->next) {
        e->user = e->vhost = "";
        e->state = "starting";
        e->channels = 0;
        e->auth_mechanism = e->ssl_protocol = NULL;
        e->frame_max = e->channel_max = e->heartbeat = 0;
        e->recv_oct = e->send_oct = e->recv_cnt = e->send_cnt = e->send_pend = 0;
        e->client_properties = AMQP_BYTES_EMPTY;
        if (e->describe) e->describe(e->ctx, e);
    }
    return head;
}

size_t connreg_count(void) { return count; }

bool connreg_close(const char *name, const char *reason)
{
    for (connreg_entry_t *e = head; e; e = e->next) {
        if (strcmp(e->name, name) != 0 || !e->close) continue;
        e->close(e->ctx, reason);
        return true;
    }
    return false;
}
