/** Markdown tables of results over seeds: one row per group, one column per x value, mean ± 95% interval. */
import { formatInterval, meanInterval } from './stats.ts';

export interface Observation {
  row: string;
  column: string | number;
  value: number;
}

export interface TableOptions {
  rowHeader: string;
  columnHeader?: (c: string | number) => string;
  digits?: number;
  /** Row order; rows not listed follow in first-seen order. */
  rowOrder?: readonly string[];
  /** Column order; without it numbers ascend and names sort alphabetically. Columns not listed follow. */
  columnOrder?: readonly (string | number)[];
  /** Text of a cell with no observations (default '—'), e.g. to say why a value cannot exist. */
  emptyCell?: (row: string, column: string | number) => string;
}

export function markdownTable(obs: readonly Observation[], o: TableOptions): string {
  const rows: string[] = [];
  const cols: (string | number)[] = [];
  const cells = new Map<string, number[]>();
  for (const ob of obs) {
    if (!rows.includes(ob.row)) rows.push(ob.row);
    if (!cols.includes(ob.column)) cols.push(ob.column);
    const k = `${ob.row}\u0000${ob.column}`;
    (cells.get(k) ?? cells.set(k, []).get(k)!).push(ob.value);
  }
  if (o.rowOrder) rows.sort((a, b) => rank(o.rowOrder!, a) - rank(o.rowOrder!, b));
  cols.sort((a, b) => (typeof a === 'number' && typeof b === 'number' ? a - b : String(a).localeCompare(String(b))));
  if (o.columnOrder) cols.sort((a, b) => rank(o.columnOrder!, a) - rank(o.columnOrder!, b));
  const head = (c: string | number) => (o.columnHeader ? o.columnHeader(c) : String(c));
  const lines = [
    `| ${o.rowHeader} | ${cols.map(head).join(' | ')} |`,
    `| --- | ${cols.map(() => '---:').join(' | ')} |`,
  ];
  for (const r of rows) {
    const vals = cols.map((c) => {
      const v = cells.get(`${r}\u0000${c}`);
      if (v) return formatInterval(meanInterval(v), o.digits ?? 3);
      return o.emptyCell ? o.emptyCell(r, c) : '—';
    });
    lines.push(`| ${r} | ${vals.join(' | ')} |`);
  }
  return lines.join('\n');
}

function rank<T>(order: readonly T[], x: T): number {
  const i = order.indexOf(x);
  return i < 0 ? order.length : i;
}
