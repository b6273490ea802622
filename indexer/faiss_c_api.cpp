/*
 * faiss_c_api.cpp - qdup's own implementation of the part of FAISS's C API that qdup calls.
 *
 * Debian's libfaiss-dev ships the C API headers (faiss/c_api/) but not the library
 * that implements them, so the top-level CMakeLists.txt compiles this file into
 * qdup_faiss when no faiss_c library is installed. It implements only the functions
 * qdup uses, each with exactly the signature its header declares: the headers are
 * included below, so a wrong signature fails to compile ("conflicting declaration of
 * C function") instead of failing at link or run time.
 *
 * How it works: the opaque C handles (FaissIndex, FaissIDSelector, ...) are the C++
 * objects' base-class pointers, reinterpreted. Every function that can fail runs its
 * body through guard(), which turns a C++ exception into the error codes of error_c.h
 * and keeps the exception's text in a thread-local buffer that faiss_get_last_error()
 * returns, so two threads never see each other's errors. The buffer is a fixed array,
 * not a std::string, so recording an error can never itself throw out of an extern "C"
 * function. Getters cannot fail and do not touch the error text.
 */
#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/IndexPreTransform_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/utils/distances_c.h>

#include <faiss/AutoTune.h>
#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>

namespace {

/* The text of the last failure in this thread; "" until something fails. 1 KiB holds
 * FAISS's longest messages, which start with the full signature of the throwing
 * function. */
thread_local char last_error[1024];

void set_error(const char *msg)
{
    std::snprintf(last_error, sizeof last_error, "%s", msg ? msg : "(no message)");
}

/* Runs body, mapping exceptions to error_c.h codes. FaissException is caught first
 * because it derives from std::exception and has its own code. */
template <class F>
int guard(F &&body)
{
    try {
        body();
        return OK;
    } catch (const faiss::FaissException &e) {
        set_error(e.what());
        return FAISS_EXCEPT;
    } catch (const std::exception &e) {
        set_error(e.what());
        return STD_EXCEPT;
    } catch (...) {
        set_error("unknown C++ exception");
        return UNKNOWN_EXCEPT;
    }
}

/* Argument checks throw like FAISS does, so a bad call from C reads as any other
 * failure instead of crashing inside FAISS. */
void require(bool ok, const char *msg)
{
    if (!ok)
        throw std::invalid_argument(msg);
}

faiss::Index *cxx(FaissIndex *p)
{
    return reinterpret_cast<faiss::Index *>(p);
}

const faiss::Index *cxx(const FaissIndex *p)
{
    return reinterpret_cast<const faiss::Index *>(p);
}

FaissIndex *c_handle(faiss::Index *p)
{
    return reinterpret_cast<FaissIndex *>(p);
}

/* A downcast that keeps the handle's value (the Index* address), as the C API's
 * faiss_X_cast functions promise: the same pointer if the object is an X, else NULL. */
template <class T>
FaissIndex *downcast(FaissIndex *p)
{
    return p && dynamic_cast<T *>(cxx(p)) ? p : nullptr;
}

} // namespace

extern "C" {

const char *faiss_get_last_error()
{
    return last_error;
}

/* --- Index ---------------------------------------------------------------------- */

int faiss_index_factory(FaissIndex **p_index, int d, const char *description,
                        FaissMetricType metric)
{
    return guard([&] {
        require(p_index != nullptr, "faiss_index_factory: p_index is NULL");
        *p_index = nullptr;
        require(description != nullptr, "faiss_index_factory: description is NULL");
        require(d > 0, "faiss_index_factory: dimension must be positive");
        faiss::Index *ix =
            faiss::index_factory(d, description, static_cast<faiss::MetricType>(metric));
        *p_index = c_handle(ix);
    });
}

void faiss_Index_free(FaissIndex *obj)
{
    delete cxx(obj);
}

int faiss_Index_d(const FaissIndex *index)
{
    return cxx(index)->d;
}

int faiss_Index_is_trained(const FaissIndex *index)
{
    return cxx(index)->is_trained ? 1 : 0;
}

idx_t faiss_Index_ntotal(const FaissIndex *index)
{
    return cxx(index)->ntotal;
}

FaissMetricType faiss_Index_metric_type(const FaissIndex *index)
{
    return static_cast<FaissMetricType>(cxx(index)->metric_type);
}

int faiss_Index_train(FaissIndex *index, idx_t n, const float *x)
{
    return guard([&] {
        require(index && (n == 0 || x), "faiss_Index_train: NULL argument");
        require(n >= 0, "faiss_Index_train: negative count");
        cxx(index)->train(n, x);
    });
}

int faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x, const idx_t *xids)
{
    return guard([&] {
        require(index && (n == 0 || (x && xids)), "faiss_Index_add_with_ids: NULL argument");
        require(n >= 0, "faiss_Index_add_with_ids: negative count");
        cxx(index)->add_with_ids(n, x, xids);
    });
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x, idx_t k,
                       float *distances, idx_t *labels)
{
    return guard([&] {
        require(index && (n == 0 || (x && distances && labels)),
                "faiss_Index_search: NULL argument");
        require(n >= 0, "faiss_Index_search: negative query count");
        require(k > 0, "faiss_Index_search: k must be positive");
        cxx(index)->search(n, x, k, distances, labels);
    });
}

int faiss_Index_reset(FaissIndex *index)
{
    return guard([&] {
        require(index != nullptr, "faiss_Index_reset: NULL index");
        cxx(index)->reset();
    });
}

int faiss_Index_remove_ids(FaissIndex *index, const FaissIDSelector *sel, size_t *n_removed)
{
    return guard([&] {
        require(index && sel, "faiss_Index_remove_ids: NULL argument");
        size_t n = cxx(index)->remove_ids(*reinterpret_cast<const faiss::IDSelector *>(sel));
        if (n_removed)
            *n_removed = n;
    });
}

int faiss_Index_reconstruct(const FaissIndex *index, idx_t key, float *recons)
{
    return guard([&] {
        require(index && recons, "faiss_Index_reconstruct: NULL argument");
        cxx(index)->reconstruct(key, recons);
    });
}

/* --- IDSelector ----------------------------------------------------------------- */

/* The handle is the IDSelector base pointer, so that faiss_IDSelector_free and
 * faiss_Index_remove_ids can take it after the C caller's cast to FaissIDSelector*. */
int faiss_IDSelectorBatch_new(FaissIDSelectorBatch **p_sel, size_t n, const idx_t *indices)
{
    return guard([&] {
        require(p_sel != nullptr, "faiss_IDSelectorBatch_new: p_sel is NULL");
        *p_sel = nullptr;
        require(n == 0 || indices, "faiss_IDSelectorBatch_new: indices is NULL");
        faiss::IDSelector *sel = new faiss::IDSelectorBatch(n, indices);
        *p_sel = reinterpret_cast<FaissIDSelectorBatch *>(sel);
    });
}

void faiss_IDSelector_free(FaissIDSelector *obj)
{
    delete reinterpret_cast<faiss::IDSelector *>(obj);
}

/* --- I/O -------------------------------------------------------------------------- */

int faiss_write_index(const FaissIndex *idx, FILE *f)
{
    return guard([&] {
        require(idx && f, "faiss_write_index: NULL argument");
        faiss::write_index(cxx(idx), f);
    });
}

int faiss_write_index_fname(const FaissIndex *idx, const char *fname)
{
    return guard([&] {
        require(idx && fname, "faiss_write_index_fname: NULL argument");
        faiss::write_index(cxx(idx), fname);
    });
}

int faiss_read_index(FILE *f, int io_flags, FaissIndex **p_out)
{
    return guard([&] {
        require(p_out != nullptr, "faiss_read_index: p_out is NULL");
        *p_out = nullptr;
        require(f != nullptr, "faiss_read_index: NULL file");
        *p_out = c_handle(faiss::read_index(f, io_flags));
    });
}

int faiss_read_index_fname(const char *fname, int io_flags, FaissIndex **p_out)
{
    return guard([&] {
        require(p_out != nullptr, "faiss_read_index_fname: p_out is NULL");
        *p_out = nullptr;
        require(fname != nullptr, "faiss_read_index_fname: NULL file name");
        *p_out = c_handle(faiss::read_index(fname, io_flags));
    });
}

/* --- ParameterSpace ------------------------------------------------------------- */

int faiss_ParameterSpace_new(FaissParameterSpace **space)
{
    return guard([&] {
        require(space != nullptr, "faiss_ParameterSpace_new: NULL argument");
        *space = reinterpret_cast<FaissParameterSpace *>(new faiss::ParameterSpace());
    });
}

void faiss_ParameterSpace_free(FaissParameterSpace *obj)
{
    delete reinterpret_cast<faiss::ParameterSpace *>(obj);
}

int faiss_ParameterSpace_set_index_parameter(const FaissParameterSpace *space,
                                             FaissIndex *index, const char *name,
                                             double value)
{
    return guard([&] {
        require(space && index && name, "faiss_ParameterSpace_set_index_parameter: NULL argument");
        reinterpret_cast<const faiss::ParameterSpace *>(space)->set_index_parameter(
            cxx(index), name, value);
    });
}

/* --- downcasts and the accessors of the wrapper types qdup inspects ---------------- */

FaissIndexIVF *faiss_IndexIVF_cast(FaissIndex *index)
{
    return downcast<faiss::IndexIVF>(index);
}

FaissIndexFlat *faiss_IndexFlat_cast(FaissIndex *index)
{
    return downcast<faiss::IndexFlat>(index);
}

FaissIndexIDMap *faiss_IndexIDMap_cast(FaissIndex *index)
{
    return downcast<faiss::IndexIDMap>(index);
}

FaissIndexIDMap2 *faiss_IndexIDMap2_cast(FaissIndex *index)
{
    return downcast<faiss::IndexIDMap2>(index);
}

FaissIndexPreTransform *faiss_IndexPreTransform_cast(FaissIndex *index)
{
    return downcast<faiss::IndexPreTransform>(index);
}

/* The handles below come from the matching faiss_X_cast, so the static downcast from
 * the Index base is valid. */
void faiss_IndexIDMap_id_map(FaissIndexIDMap *index, idx_t **p_id_map, size_t *p_size)
{
    auto *m = static_cast<faiss::IndexIDMap *>(cxx(index));
    *p_id_map = m->id_map.data();
    *p_size = m->id_map.size();
}

void faiss_IndexFlat_xb(FaissIndexFlat *index, float **p_xb, size_t *p_size)
{
    auto *f = static_cast<faiss::IndexFlat *>(cxx(index));
    if (p_xb)
        *p_xb = f->get_xb();
    if (p_size)
        *p_size = f->codes.size() / sizeof(float);
}

FaissIndex *faiss_IndexIDMap_sub_index(FaissIndexIDMap *index)
{
    return c_handle(static_cast<faiss::IndexIDMap *>(cxx(index))->index);
}

FaissIndex *faiss_IndexPreTransform_index(const FaissIndexPreTransform *index)
{
    return c_handle(static_cast<const faiss::IndexPreTransform *>(cxx(index))->index);
}

/* --- distance computation knobs ----------------------------------------------------- */

/* Queries per search call from which exhaustive search switches from per-query
 * SIMD loops to BLAS matrix products (FAISS's default: 20). A process-wide global. */
void faiss_set_distance_compute_blas_threshold(int value)
{
    faiss::distance_compute_blas_threshold = value;
}

int faiss_get_distance_compute_blas_threshold()
{
    return faiss::distance_compute_blas_threshold;
}

} // extern "C"
