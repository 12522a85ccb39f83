// Mean softmax cross-entropy: one thread per row (class counts are small), in double; the
// per-row losses are summed on the host in a fixed order.
#include "common.cuh"

extern "C" __global__ void softmax_xent(const float* __restrict__ logits,
                                        const int* __restrict__ labels, float* __restrict__ grad,
                                        double* __restrict__ row_loss, int n, int classes) {
    FOR_EACH(r, n) {
        const float* row = logits + (size_t)r * classes;
        double mx = row[0];
        for (int c = 1; c < classes; c++) mx = fmax(mx, (double)row[c]);
        double z = 0.0;
        for (int c = 0; c < classes; c++) z += exp((double)row[c] - mx);
        int lab = labels[r];
        row_loss[r] = log(z) + mx - (double)row[lab];
        for (int c = 0; c < classes; c++) {
            double p = exp((double)row[c] - mx) / z;
            grad[(size_t)r * classes + c] = (float)((p - (c == lab ? 1.0 : 0.0)) / (double)n);
        }
    }
}
