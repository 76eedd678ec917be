// UNIT-DEPS: core/log.c
/* httpc built as on libcurl older than 7.85 (Ubuntu 22.04 has 7.81): the
 * CURLOPT_PROTOCOLS fallback is forced and CURLOPT_PROTOCOLS_STR is
 * poisoned, so any use of it outside the version guard fails to compile
 * here. Then every test of test_httpc.c runs against that build. */
#define PMD_FORCE_CURL_PROTOCOLS_LEGACY 1
#define CURL_DISABLE_DEPRECATION 1
#include <curl/curl.h>
#pragma GCC poison CURLOPT_PROTOCOLS_STR

#include "../../core/httpc.c"
#include "test_httpc.c"
