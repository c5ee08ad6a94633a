/**
 * ALiBi with trained slopes: the control for learned HyPE (SPEC section 9). Same bias as alibi.ts,
 *   bias(h, D) = -m_h |D|,
 * but each head's slope is a parameter. Parametrisation: the trained value is s_h = log m_h (parameter
 * `alibi.logSlope`, shape [H]), m_h = exp(s_h), so a slope stays positive (a penalty, never a reward for distance)
 * whatever the optimizer does, and an Adam step of ~lr changes every head's slope by the same relative amount
 * (the reference slopes span 2^-1 .. 2^-8, so steps in raw slope units would be huge for flat heads and tiny for
 * steep ones). Initialised at the reference slopes (alibi-slopes.ts); no weight decay (decay would pull m_h to 1).
 * Gradient: d loss / d s_h = m_h * d loss / d m_h, where d loss / d m_h comes from the kernel's dTable
 * (-sum_D dTable[h, D] |D|) or, on the concat route, from the query columns' gradient (alibi-route.ts).
 * Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv].
 */
import type { Param } from './encoding.ts';
import { alibiSlopes } from './alibi-slopes.ts';
import { defineAlibi, type AlibiRouteOptions } from './alibi-route.ts';

export type AlibiLearnedOptions = AlibiRouteOptions;

export const alibiLearnedEncoding = defineAlibi(
  'alibi-learned',
  'ALiBi with trained per-head slopes (log-slope parameters, initialised at the reference slopes): the control ' +
    'for learned HyPE',
  (dims) => {
    const init = alibiSlopes(dims.heads).map(Math.log);
    const logSlope: Param = {
      name: 'alibi.logSlope',
      shape: [dims.heads],
      data: init,
      grad: new Float64Array(init.length),
      decay: false,
    };
    return {
      params: [logSlope],
      slopes: () => Float64Array.from(logSlope.data, Math.exp),
      // d loss / d log m = m d loss / d m
      slopeGrads(m, dSlopes) {
        for (let h = 0; h < m.length; h++) logSlope.grad[h]! += dSlopes[h]! * m[h]!;
      },
    };
  },
);
