/* A job: does its work and exits; `--lifecycle job` runs it to completion (a service that
   exits would be restarted by an app, and counts as failed when it exits non-zero). */
#include <stdio.h>

int main(void) {
    unsigned long sum = 0;
    for (unsigned long i = 1; i <= 1000000; i++) sum += i;
    printf("sum of 1..1000000 is %lu\n", sum);
    return 0;
}
