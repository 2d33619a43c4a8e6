/* Private to src/train: run settings <-> the JSON of training_state.json. */
#ifndef FDPO_TRAIN_SETTINGS_JSON_H
#define FDPO_TRAIN_SETTINGS_JSON_H
#include <cJSON.h>
#include "fdpo/trainer.h"
/* {"lr": 0.001, "schedule": "cosine", ...} (values typed; fixedness is listed separately). */
cJSON *fdpo_settings_to_json(const fdpo_settings *s);
/* Add the members of obj to s; fixed_list (a JSON array of names, or NULL = all fixed, as in
 * version-1 states) marks the fixed ones. Error names path and the setting. */
int fdpo_settings_from_json(fdpo_settings *s, const cJSON *obj, const cJSON *fixed_list, const char *path);
#endif
