/* test_hibernate.c - unit tests for broker/hibernate.c: dropping the clean pages of the program
 * and its libraries from the resident set lowers RSS and changes nothing the process sees.
 *
 * The dangerous mistake would be to advise away a page that holds data of its own: a RELRO
 * page (relocated pointers, copy-on-write from the file), writable data, heap or an anonymous
 * mapping - MADV_DONTNEED would silently give back the file's bytes or zeros. The tests fill
 * each kind with known contents, drop, and read them back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "broker/hibernate.h"

/* .rodata (a read-only file mapping of this executable): dropped, read back from the file. */
static const unsigned char rodata_table[64 * 1024] = {1, 2, 3, 4, 5, 6, 7, 8, [65535] = 42};
/* RELRO in a PIE: pointers the dynamic linker relocated at load (anonymous copy-on-write pages). */
static const char *const relro_names[] = {"alpha", "beta", "gamma", "delta"};
/* .data: writable, changed at run time. */
static int data_counter = 7;

static uint64_t rss_kb(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) return 0;
    char line[256];
    unsigned long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Rss: %lu kB", &kb) == 1) break;
    fclose(f);
    return kb;
}

static uint64_t rodata_sum(void)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof rodata_table; i++) sum = sum * 31 + rodata_table[i];
    return sum;
}

static void test_drop_lowers_rss(void **state)
{
    (void)state;
    (void)rodata_sum(); /* every page of the table resident */
    uint64_t before = rss_kb();
    size_t dropped = hib_drop_code_pages();
    uint64_t after = rss_kb();
    assert_true(dropped > 0);
    assert_true(after < before);
}

static void test_read_only_data_reads_back_the_same(void **state)
{
    (void)state;
    uint64_t sum = rodata_sum();
    assert_true(hib_drop_code_pages() > 0);
    assert_int_equal(rodata_sum(), sum);
    assert_int_equal(rodata_table[65535], 42);
}

static void test_relocated_and_writable_data_kept(void **state)
{
    (void)state;
    data_counter += 5;
    for (int round = 0; round < 3; round++) {
        hib_drop_code_pages();
        assert_string_equal(relro_names[0], "alpha");
        assert_string_equal(relro_names[3], "delta");
        assert_int_equal(data_counter, 12);
    }
}

static void test_heap_and_anonymous_memory_kept(void **state)
{
    (void)state;
    size_t len = 4 << 20;
    unsigned char *heap = malloc(len);
    unsigned char *anon = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_non_null(heap);
    assert_true(anon != MAP_FAILED);
    for (size_t i = 0; i < len; i++) heap[i] = anon[i] = (unsigned char)(i * 7 + 1);
    hib_trim(); /* malloc_trim too */
    for (size_t i = 0; i < len; i += 4093) {
        assert_int_equal(heap[i], (unsigned char)(i * 7 + 1));
        assert_int_equal(anon[i], (unsigned char)(i * 7 + 1));
    }
    munmap(anon, len);
    free(heap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drop_lowers_rss),
        cmocka_unit_test(test_read_only_data_reads_back_the_same),
        cmocka_unit_test(test_relocated_and_writable_data_kept),
        cmocka_unit_test(test_heap_and_anonymous_memory_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
