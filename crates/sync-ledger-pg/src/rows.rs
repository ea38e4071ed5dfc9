//! Batched reads and writes of a partition's rows: one statement per kind of access,
//! whatever the number of keys, with values split into typed columns when the schema
//! has them.

use sync_ledger::store::{BatchOp, Partition, check_key};
use sync_ledger::{Error, Result};

use crate::conn::Conn;
use crate::keys::{log_columns, tenant_of};
use crate::schema::{Shape, shape, table};
use crate::values::{ValueArrays, ValueShape, select_list, upsert_sql, value_of, value_shape};

/// Rows fetched per statement while migration 2 converts a table.
const CONVERT_CHUNK_ROWS: i64 = 1000;

/// How a partition's values are stored: split into typed columns from schema 2 on
/// (`typed`), whole in `v` before.
pub(crate) fn vshape(typed: bool, p: Partition) -> ValueShape {
    if typed {
        value_shape(p)
    } else {
        ValueShape::Blob
    }
}

/// One batched read of `keys` in `conn`.
pub(crate) fn get_many(
    conn: &mut Conn,
    schema: &str,
    typed: bool,
    p: Partition,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Vec<u8>>>> {
    for k in keys {
        check_key(k)?;
    }
    let mut out = vec![None; keys.len()];
    if keys.is_empty() {
        return Ok(out);
    }
    let t = table(schema, p);
    let vs = vshape(typed, p);
    let list = select_list(vs, "t");
    // Keys that cannot be in the table (not a tenant key) are simply absent; the rest
    // are sent with their index in `keys`.
    let mut idx: Vec<i64> = Vec::with_capacity(keys.len());
    let rows = match shape(p) {
        Shape::Global => {
            let ks: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            idx.extend(0..keys.len() as i64);
            conn.query(
                &format!(
                    "SELECT q.i, {list} FROM unnest($1::bytea[], $2::int8[]) AS q(k, i) \
                     JOIN {t} t ON t.k = q.k"
                ),
                &[&ks, &idx],
            )?
        }
        Shape::Tenant => {
            let (mut tns, mut ks) = (Vec::new(), Vec::new());
            for (i, k) in keys.iter().enumerate() {
                if let Ok(tn) = tenant_of(p, k) {
                    tns.push(tn);
                    ks.push(k.as_slice());
                    idx.push(i as i64);
                }
            }
            conn.query(
                &format!(
                    "SELECT q.i, {list} FROM unnest($1::int8[], $2::bytea[], $3::int8[]) \
                     AS q(tn, k, i) JOIN {t} t ON t.tn = q.tn AND t.k = q.k"
                ),
                &[&tns, &ks, &idx],
            )?
        }
        Shape::Log => {
            let (mut tns, mut poss) = (Vec::new(), Vec::new());
            for (i, k) in keys.iter().enumerate() {
                if let Ok((tn, pos)) = log_columns(p, k) {
                    tns.push(tn);
                    poss.push(pos);
                    idx.push(i as i64);
                }
            }
            conn.query(
                &format!(
                    "SELECT q.i, {list} FROM unnest($1::int8[], $2::int8[], $3::int8[]) \
                     AS q(tn, pos, i) JOIN {t} t ON t.tn = q.tn AND t.pos = q.pos"
                ),
                &[&tns, &poss, &idx],
            )?
        }
    };
    for row in rows {
        let i: i64 = row.get(0);
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(value_of(p, vs, &row, 1)?);
        }
    }
    Ok(out)
}

/// Writes `ops` of one partition (each key once): one upsert and one delete at most.
pub(crate) fn write(
    conn: &mut Conn,
    schema: &str,
    typed: bool,
    p: Partition,
    ops: &[BatchOp],
) -> Result<()> {
    let puts: Vec<(&[u8], &[u8])> = ops
        .iter()
        .filter_map(|o| o.value.as_deref().map(|v| (o.key.as_slice(), v)))
        .collect();
    let deletes: Vec<&[u8]> = ops
        .iter()
        .filter(|o| o.value.is_none())
        .map(|o| o.key.as_slice())
        .collect();
    upsert(conn, schema, typed, p, &puts)?;
    if deletes.is_empty() {
        return Ok(());
    }
    let t = table(schema, p);
    match shape(p) {
        Shape::Global => {
            conn.query(
                &format!("DELETE FROM {t} WHERE k = ANY($1::bytea[])"),
                &[&deletes],
            )?;
        }
        Shape::Tenant => {
            let tns = deletes
                .iter()
                .map(|k| tenant_of(p, k))
                .collect::<Result<Vec<i64>>>()?;
            conn.query(
                &format!(
                    "DELETE FROM {t} USING unnest($1::int8[], $2::bytea[]) AS d(tn, k) \
                     WHERE {t}.tn = d.tn AND {t}.k = d.k"
                ),
                &[&tns, &deletes],
            )?;
        }
        Shape::Log => {
            let (tns, poss): (Vec<i64>, Vec<i64>) = deletes
                .iter()
                .map(|k| log_columns(p, k))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            conn.query(
                &format!(
                    "DELETE FROM {t} USING unnest($1::int8[], $2::int8[]) AS d(tn, pos) \
                     WHERE {t}.tn = d.tn AND {t}.pos = d.pos"
                ),
                &[&tns, &poss],
            )?;
        }
    }
    Ok(())
}

/// Inserts or replaces `puts` of one partition in one statement.
pub(crate) fn upsert(
    conn: &mut Conn,
    schema: &str,
    typed: bool,
    p: Partition,
    puts: &[(&[u8], &[u8])],
) -> Result<()> {
    if puts.is_empty() {
        return Ok(());
    }
    let t = table(schema, p);
    let vs = vshape(typed, p);
    let values: Vec<&[u8]> = puts.iter().map(|(_, v)| *v).collect();
    let arrays = ValueArrays::new(vs, &values);
    let ks: Vec<&[u8]> = puts.iter().map(|(k, _)| *k).collect();
    let (tns, poss): (Vec<i64>, Vec<i64>);
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::new();
    let keys: &[(&str, &str)] = match shape(p) {
        Shape::Global => {
            params.push(&ks);
            &[("k", "bytea")]
        }
        Shape::Tenant => {
            tns = ks
                .iter()
                .map(|k| tenant_of(p, k))
                .collect::<Result<Vec<i64>>>()?;
            params.push(&tns);
            params.push(&ks);
            &[("tn", "int8"), ("k", "bytea")]
        }
        Shape::Log => {
            (tns, poss) = ks
                .iter()
                .map(|k| log_columns(p, k))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            params.push(&tns);
            params.push(&poss);
            &[("tn", "int8"), ("pos", "int8")]
        }
    };
    params.extend(arrays.params());
    conn.query(&upsert_sql(&t, keys, vs), &params)?;
    Ok(())
}

/// Migration 2's move of one table's rows into its typed columns, in the migrating
/// transaction: every row whose value splits is rewritten with the typed columns and
/// a null `v`, chunk by chunk in key order; the others keep their `v`.
pub(crate) fn convert(conn: &mut Conn, schema: &str, p: Partition) -> Result<()> {
    let t = table(schema, p);
    let (key_cols, key_of): (&str, fn(&postgres::Row) -> Vec<u8>) = match shape(p) {
        Shape::Log => ("tn, pos", |r| crate::keys::log_key(r.get(0), r.get(1))),
        Shape::Tenant => ("tn, k", |r| r.get(1)),
        Shape::Global => {
            return Err(Error::Inconsistent(format!(
                "partition {} has no typed columns",
                p.name()
            )));
        }
    };
    // The last key converted, as the key columns' values.
    let mut after: Option<postgres::Row> = None;
    loop {
        let rows = match &after {
            None => conn.query(
                &format!(
                    "SELECT {key_cols}, v FROM {t} WHERE v IS NOT NULL \
                     ORDER BY {key_cols} LIMIT $1"
                ),
                &[&CONVERT_CHUNK_ROWS],
            )?,
            Some(last) => {
                let tn: i64 = last.get(0);
                if shape(p) == Shape::Log {
                    let pos: i64 = last.get(1);
                    conn.query(
                        &format!(
                            "SELECT {key_cols}, v FROM {t} WHERE v IS NOT NULL \
                             AND (tn, pos) > ($1, $2) ORDER BY {key_cols} LIMIT $3"
                        ),
                        &[&tn, &pos, &CONVERT_CHUNK_ROWS],
                    )?
                } else {
                    let k: Vec<u8> = last.get(1);
                    conn.query(
                        &format!(
                            "SELECT {key_cols}, v FROM {t} WHERE v IS NOT NULL \
                             AND (tn, k) > ($1, $2) ORDER BY {key_cols} LIMIT $3"
                        ),
                        &[&tn, &k, &CONVERT_CHUNK_ROWS],
                    )?
                }
            }
        };
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = rows.iter().map(|r| (key_of(r), r.get(2))).collect();
        let puts: Vec<(&[u8], &[u8])> = kvs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        upsert(conn, schema, true, p, &puts)?;
        if (rows.len() as i64) < CONVERT_CHUNK_ROWS {
            return Ok(());
        }
        after = rows.into_iter().last();
    }
}
