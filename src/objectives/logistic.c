/* sigma, log sigma and softplus in the forms that neither overflow nor cancel:
 * exp is only ever taken of a non-positive number, and log1p keeps log(1 + tiny) exact. */
#include <math.h>
#include "fdpo/objectives.h"

double fdpo_sigmoid(double x) {
    if (x >= 0) return 1 / (1 + exp(-x));
    double e = exp(x); /* x < 0: e in (0, 1), no overflow; 1 - sigma(-x) would cancel to 0 */
    return e / (1 + e);
}

double fdpo_softplus(double x) { return (x > 0 ? x : 0) + log1p(exp(-fabs(x))); }

double fdpo_log_sigmoid(double x) { return -fdpo_softplus(-x); }
