/* The firmware's command line, the same for every build. */
#ifndef REFMCU_OPTIONS_H
#define REFMCU_OPTIONS_H

#include <stddef.h>

#include "app.h"

struct paths {
    const char *port, *flash, *provision;
};

extern const char options_usage[];
/* Fill o and p from argv; -1 with the reason in err when it is not a command line of ours. */
int options_parse(struct options *o, struct paths *p, int argc, char **argv, char *err, size_t cap);

#endif
