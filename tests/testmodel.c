/*
 * testmodel.c - another model of a fixture's shape for the tests of reembed and reload
 * (testmodel.h): the fixture's weights moved by a fixed, deterministic amount.
 */
#include "testmodel.h"

#include <math.h>
#include <stddef.h>

#include "qdup/common.h"
#include "qdup/model.h"
#include "testutil.h"

void qt_variant_model(const char *src, const char *dst, int v)
{
    char err[QD_ERRMSG_MAX];
    qd_model *m = NULL;
    if (qd_model_load(src, &m, err, sizeof err))
        fail_msg("%s", err);
    size_t n = 0;
    float *w = qd_model_param_data(m, &n);
    for (size_t i = 0; i < n; i++)
        w[i] = 0.8f * w[i] + 0.05f * (float)v * sinf((float)i);
    if (qd_model_save(m, dst, err, sizeof err))
        fail_msg("%s", err);
    qd_model_free(m);
}
