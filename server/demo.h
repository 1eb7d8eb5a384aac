/*
 * demo.h — the bundled demo model (models/glimpse-shapes*.gguf), the default of
 * `glimpse ask` and `glimpse serve` when no --model is given.
 */
#ifndef GLIMPSE_DEMO_H
#define GLIMPSE_DEMO_H

/* Looks for models/glimpse-shapes.gguf next to the program (an in-tree build),
 * then under the current directory. On success *model is an owned path and
 * *mmproj the projector's path or NULL (free both); returns -1 when absent. */
int find_demo_model(char **model, char **mmproj);

#endif /* GLIMPSE_DEMO_H */
