/*
 * plain_text.c - a business-logic guest that answers in plain text, not JSON: the
 * service wraps its stdout as {"output": ...}. Prints its first argument after argv[0]
 * and how many bytes of image it was given.
 */
#include <stdio.h>

int main(int argc, char **argv) {
    unsigned long n = 0;
    while (getchar() != EOF) n++;
    printf("plain text from a guest: %s, %lu bytes\n", argc > 1 ? argv[1] : "(no args)", n);
    return 0;
}
