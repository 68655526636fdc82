# Op codes and span functions of fastnn_simd.h, shared by the activation and dense kernels.
cdef extern from "fastnn_simd.h" nogil:
    enum:
        FNN_IDENTITY
        FNN_RELU
        FNN_LEAKY
        FNN_SIGMOID
        FNN_TANH
        FNN_PRELU
    void fnn_act_fwd_f32(int op, const float *x, float *y, Py_ssize_t n, float alpha, const float *avec)
    void fnn_act_fwd_f64(int op, const double *x, double *y, Py_ssize_t n, double alpha, const double *avec)
    void fnn_act_bwd_f32(int op, const float *dout, const float *saved, float *dx, Py_ssize_t n, float alpha, const float *avec)
    void fnn_act_bwd_f64(int op, const double *dout, const double *saved, double *dx, Py_ssize_t n, double alpha, const double *avec)
    void fnn_act_fwd_rows_f32(int op, const float *x, float *y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, float alpha, const float *avec)
    void fnn_act_fwd_rows_f64(int op, const double *x, double *y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, double alpha, const double *avec)
    void fnn_act_bwd_acc_rows_f32(int op, const float *dout, const float *saved, float *dx, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, float alpha, const float *avec, float *acc)
    void fnn_act_bwd_acc_rows_f64(int op, const double *dout, const double *saved, double *dx, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, double alpha, const double *avec, double *acc)
    void fnn_act_bwd_acc_inplace_rows_f32(int op, float *g, const float *saved, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, float alpha, const float *avec, float *acc)
    void fnn_act_bwd_acc_inplace_rows_f64(int op, double *g, const double *saved, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, double alpha, const double *avec, double *acc)
    void fnn_prelu_alpha_acc_rows_f32(const float *dout, const float *saved, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, float *aacc)
    void fnn_prelu_alpha_acc_rows_f64(const double *dout, const double *saved, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, double *aacc)
    void fnn_bias_act_fwd_rows_f32(int op, float *y, Py_ssize_t ldy, Py_ssize_t rows, const float *b, Py_ssize_t n, float alpha, const float *avec)
    void fnn_bias_act_fwd_rows_f64(int op, double *y, Py_ssize_t ldy, Py_ssize_t rows, const double *b, Py_ssize_t n, double alpha, const double *avec)
    void fnn_bias_act_keep_rows_f32(int op, float *z, const float *b, float *y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, float alpha, const float *avec)
    void fnn_bias_act_keep_rows_f64(int op, double *z, const double *b, double *y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, double alpha, const double *avec)
    void fnn_add_into_rows_f32(const float *v, Py_ssize_t ldv, Py_ssize_t rows, float *acc, Py_ssize_t n)
    void fnn_add_into_rows_f64(const double *v, Py_ssize_t ldv, Py_ssize_t rows, double *acc, Py_ssize_t n)
    void fnn_act_bwd_into_saved_rows_f32(int op, const float *g, Py_ssize_t ldg, float *s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n, float alpha, const float *avec)
    void fnn_act_bwd_into_saved_rows_f64(int op, const double *g, Py_ssize_t ldg, double *s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n, double alpha, const double *avec)
    void fnn_act_bwd_rows_f32(int op, const float *dout, Py_ssize_t ldg, const float *saved, float *dx, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, float alpha, const float *avec)
    void fnn_act_bwd_rows_f64(int op, const double *dout, Py_ssize_t ldg, const double *saved, double *dx, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, double alpha, const double *avec)
    void fnn_act_bwd_inplace_rows_f32(int op, float *g, Py_ssize_t ldg, const float *saved, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n, float alpha, const float *avec)
    void fnn_act_bwd_inplace_rows_f64(int op, double *g, Py_ssize_t ldg, const double *saved, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n, double alpha, const double *avec)
    void fnn_relu_mask_rows_f32(const float *s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n, void *bits)
    void fnn_relu_mask_rows_f64(const double *s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n, void *bits)
    void fnn_relu_bwd_mask_rows_f32(float *g, Py_ssize_t ldg, Py_ssize_t rows, Py_ssize_t n, const void *bits)
    void fnn_relu_bwd_mask_rows_f64(double *g, Py_ssize_t ldg, Py_ssize_t rows, Py_ssize_t n, const void *bits)
    Py_ssize_t fnn_load_label(const Py_ssize_t *p)
    void fnn_softmax_rows_f32(const float *x, float *d, Py_ssize_t rows, Py_ssize_t C,
                              const Py_ssize_t *labels, float inv_n, double *losses,
                              double *sums)
    void fnn_softmax_rows_f64(const double *x, double *d, Py_ssize_t rows, Py_ssize_t C,
                              const Py_ssize_t *labels, double inv_n, double *losses,
                              double *sums)


# Fused-type front ends: one call site per operation in the kernels, whatever the dtype.
from cython cimport floating


cdef inline bint keeps_pre(int op) noexcept nogil:
    """The activation's backward reads its pre-activation (leaky relu, prelu), not its output."""
    return op == FNN_LEAKY or op == FNN_PRELU

cdef inline void act_fwd(int op, const floating *x, floating *y, Py_ssize_t n, double alpha,
                         const floating *avec) noexcept nogil:
    if floating is float:
        fnn_act_fwd_f32(op, x, y, n, <float>alpha, avec)
    else:
        fnn_act_fwd_f64(op, x, y, n, alpha, avec)

cdef inline void act_bwd(int op, const floating *dout, const floating *saved, floating *dx,
                         Py_ssize_t n, double alpha, const floating *avec) noexcept nogil:
    if floating is float:
        fnn_act_bwd_f32(op, dout, saved, dx, n, <float>alpha, avec)
    else:
        fnn_act_bwd_f64(op, dout, saved, dx, n, alpha, avec)

cdef inline void bias_act_fwd_rows(int op, floating *y, Py_ssize_t ldy, Py_ssize_t rows,
                                   const floating *b, Py_ssize_t n, double alpha,
                                   const floating *avec) noexcept nogil:
    if floating is float:
        fnn_bias_act_fwd_rows_f32(op, y, ldy, rows, b, n, <float>alpha, avec)
    else:
        fnn_bias_act_fwd_rows_f64(op, y, ldy, rows, b, n, alpha, avec)

cdef inline void bias_act_keep_rows(int op, floating *z, const floating *b, floating *y,
                                    Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n, double alpha,
                                    const floating *avec) noexcept nogil:
    if floating is float:
        fnn_bias_act_keep_rows_f32(op, z, b, y, ld, rows, n, <float>alpha, avec)
    else:
        fnn_bias_act_keep_rows_f64(op, z, b, y, ld, rows, n, alpha, avec)

cdef inline void add_into_rows(const floating *v, Py_ssize_t ldv, Py_ssize_t rows,
                               floating *acc, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fnn_add_into_rows_f32(v, ldv, rows, acc, n)
    else:
        fnn_add_into_rows_f64(v, ldv, rows, acc, n)

cdef inline void act_bwd_into_saved_rows(int op, const floating *g, Py_ssize_t ldg, floating *s,
                                         Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n,
                                         double alpha, const floating *avec) noexcept nogil:
    if floating is float:
        fnn_act_bwd_into_saved_rows_f32(op, g, ldg, s, lds, rows, n, <float>alpha, avec)
    else:
        fnn_act_bwd_into_saved_rows_f64(op, g, ldg, s, lds, rows, n, alpha, avec)

cdef inline void act_bwd_rows(int op, const floating *dout, Py_ssize_t ldg,
                              const floating *saved, floating *dx, Py_ssize_t ld,
                              Py_ssize_t rows, Py_ssize_t n, double alpha,
                              const floating *avec) noexcept nogil:
    if floating is float:
        fnn_act_bwd_rows_f32(op, dout, ldg, saved, dx, ld, rows, n, <float>alpha, avec)
    else:
        fnn_act_bwd_rows_f64(op, dout, ldg, saved, dx, ld, rows, n, alpha, avec)

cdef inline void act_bwd_inplace_rows(int op, floating *g, Py_ssize_t ldg, const floating *saved,
                                      Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n, double alpha,
                                      const floating *avec) noexcept nogil:
    if floating is float:
        fnn_act_bwd_inplace_rows_f32(op, g, ldg, saved, lds, rows, n, <float>alpha, avec)
    else:
        fnn_act_bwd_inplace_rows_f64(op, g, ldg, saved, lds, rows, n, alpha, avec)

cdef inline void relu_mask_rows(const floating *s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t n,
                                void *bits) noexcept nogil:
    if floating is float:
        fnn_relu_mask_rows_f32(s, lds, rows, n, bits)
    else:
        fnn_relu_mask_rows_f64(s, lds, rows, n, bits)

cdef inline void relu_bwd_mask_rows(floating *g, Py_ssize_t ldg, Py_ssize_t rows, Py_ssize_t n,
                                    const void *bits) noexcept nogil:
    if floating is float:
        fnn_relu_bwd_mask_rows_f32(g, ldg, rows, n, bits)
    else:
        fnn_relu_bwd_mask_rows_f64(g, ldg, rows, n, bits)

cdef inline void softmax_rows(const floating *x, floating *d, Py_ssize_t rows, Py_ssize_t C,
                              const Py_ssize_t *labels, floating inv_n,
                              double *losses, double *sums) noexcept nogil:
    if floating is float:
        fnn_softmax_rows_f32(x, d, rows, C, labels, inv_n, losses, sums)
    else:
        fnn_softmax_rows_f64(x, d, rows, C, labels, inv_n, losses, sums)

cdef inline void act_fwd_rows(int op, const floating *x, floating *y, Py_ssize_t ld,
                              Py_ssize_t rows, Py_ssize_t n, double alpha,
                              const floating *avec) noexcept nogil:
    if floating is float:
        fnn_act_fwd_rows_f32(op, x, y, ld, rows, n, <float>alpha, avec)
    else:
        fnn_act_fwd_rows_f64(op, x, y, ld, rows, n, alpha, avec)

cdef inline void act_bwd_acc_rows(int op, const floating *dout, const floating *saved,
                                  floating *dx, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n,
                                  double alpha, const floating *avec,
                                  floating *acc) noexcept nogil:
    if floating is float:
        fnn_act_bwd_acc_rows_f32(op, dout, saved, dx, ld, rows, n, <float>alpha, avec, acc)
    else:
        fnn_act_bwd_acc_rows_f64(op, dout, saved, dx, ld, rows, n, alpha, avec, acc)

cdef inline void act_bwd_acc_inplace_rows(int op, floating *g, const floating *saved,
                                          Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t n,
                                          double alpha, const floating *avec,
                                          floating *acc) noexcept nogil:
    if floating is float:
        fnn_act_bwd_acc_inplace_rows_f32(op, g, saved, ld, rows, n, <float>alpha, avec, acc)
    else:
        fnn_act_bwd_acc_inplace_rows_f64(op, g, saved, ld, rows, n, alpha, avec, acc)

cdef inline void prelu_alpha_acc_rows(const floating *dout, const floating *saved, Py_ssize_t ld,
                                      Py_ssize_t rows, Py_ssize_t n,
                                      floating *aacc) noexcept nogil:
    if floating is float:
        fnn_prelu_alpha_acc_rows_f32(dout, saved, ld, rows, n, aacc)
    else:
        fnn_prelu_alpha_acc_rows_f64(dout, saved, ld, rows, n, aacc)
