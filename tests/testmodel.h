/*
 * testmodel.h - models for the tests of switching models (reembed, reload): another
 * model of a fixture's dimension and vocabulary, so that a store can switch to it.
 */
#ifndef QDUP_TESTMODEL_H
#define QDUP_TESTMODEL_H

/* Writes the model at src with every weight perturbed (variant v >= 1: by how much) to
 * dst: the same shapes and words, other vectors, another fingerprint. Fails the test
 * if it cannot. */
void qt_variant_model(const char *src, const char *dst, int v);

#endif
