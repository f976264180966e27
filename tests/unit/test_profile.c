#include "testutil.h"
static Suite *make_suite(void) { return suite_create("profile"); }
int main(void) { return test_main(make_suite()); }
