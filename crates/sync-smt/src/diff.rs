//! The sans-IO diff: an [`Initiator`] session and a stateless [`Responder`].

use std::collections::VecDeque;

use crate::error::Error;
use crate::hash::{Hash, Key, Prefix};
use crate::tree::Tree;
use crate::wire::{Answer, Limits, Params, Query, QueryBody, Request, Response, View, check_split};

/// Bytes kept free in every message for the fields around the query or answer list.
const HEADER_BYTES_MAX: usize = 64;

/// What an [`Initiator`] needs: protocol parameters (sent to the responder), message
/// limits, and how long to keep trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Parameters carried in every request. Default [`Params::default`].
    pub params: Params,
    /// Limits on messages sent and received. Default [`Limits::default`].
    pub limits: Limits,
    /// Most round trips in one attempt. Default 128 (a full descent needs at most 33 when
    /// no reply is deferred).
    pub round_trips_max: usize,
    /// Most attempts, each with a fresh salt, before a root mismatch is an error.
    /// Default 3.
    pub attempts_max: u32,
    /// Most prefixes open at once (queued or in flight). Each answer can open up to 256
    /// new prefixes, so this bounds the memory a responder can make the initiator spend
    /// (about 150 bytes per prefix). Default 524288: a 10% difference over a million keys
    /// opens about 100000.
    pub open_prefixes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            params: Params::default(),
            limits: Limits::default(),
            round_trips_max: 128,
            attempts_max: 3,
            open_prefixes_max: 1 << 19,
        }
    }
}

/// The result of a finished session: exactly which keys each side lacks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[must_use]
pub struct Diff {
    /// Keys the initiator holds and the responder lacks, increasing.
    pub only_local: Vec<Key>,
    /// Keys the responder holds and the initiator lacks, increasing.
    pub only_remote: Vec<Key>,
    /// Round trips used, over all attempts.
    pub round_trips: usize,
    /// Attempts used (more than 1 only after a fingerprint collision or a change on the
    /// responder's side).
    pub attempts: u32,
}

/// What to do after handling a response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send this request and hand the response to [`Initiator::handle`].
    Send(Request),
    /// The session is over.
    Done(Diff),
}

/// The initiator's side of a diff session: a state machine that produces requests and
/// consumes responses, never touching a transport.
///
/// Each round it sends, for every prefix still open, either a fingerprint of its subtree,
/// the fingerprints of its 16 children, or digests of its keys when it holds few; the
/// responder answers "same", its own children's fingerprints or keys, or resolves a digest
/// list. Only differing subtrees are descended, so a session costs about
/// `d · log16(n / d)` fingerprints for `d` differences among `n` keys, in
/// `≈ ½ log16(n) + 1` round trips.
///
/// The session ends by checking that the local root with the computed difference applied
/// equals the responder's full root; on a mismatch (a collision of shortened fingerprints,
/// or a responder that changed meanwhile) it starts over with a salt derived from the
/// caller's salt and the attempt number, at most [`Config::attempts_max`] times. A missed
/// difference is therefore never reported as success.
///
/// The local tree must not change during a session ([`Error::LocalChanged`]); clone it
/// if writes continue meanwhile. State held: the open prefixes and the differences found,
/// `O(d)`.
///
/// ```
/// use sync_smt::{Config, Initiator, Responder, Step, Tree};
///
/// let a = Tree::from_keys([[1; 32], [2; 32]]);
/// let b = Tree::from_keys([[2; 32], [3; 32]]);
/// let responder = Responder::new(Config::default().limits);
/// let (mut session, mut request) = Initiator::start(&a, Config::default(), [7; 16])?;
/// let diff = loop {
///     let reply = responder.respond_bytes(&b, &request.encode())?;
///     match session.handle_bytes(&a, &reply)? {
///         Step::Send(next) => request = next,
///         Step::Done(diff) => break diff,
///     }
/// };
/// assert_eq!(diff.only_local, vec![[1; 32]]);
/// assert_eq!(diff.only_remote, vec![[3; 32]]);
/// # Ok::<(), sync_smt::Error>(())
/// ```
#[derive(Debug)]
pub struct Initiator {
    config: Config,
    base_salt: [u8; 16],
    attempt: u32,
    salt: [u8; 16],
    keys: SessionKeys,
    local_root: Hash,
    remote_root: Option<Hash>,
    pending: VecDeque<Query>,
    in_flight: Vec<Query>,
    only_local: Vec<Key>,
    only_remote: Vec<Key>,
    round_trips: usize,
    round_trips_total: usize,
}

impl Initiator {
    /// Start a session over `tree` and return it with its first request (a fingerprint of
    /// the whole tree: about 40 bytes). `salt` must be unpredictable to third parties (from
    /// the caller's seeded RNG); nothing inside reads randomness.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParams`] if the config is out of bounds.
    pub fn start(
        tree: &Tree,
        config: Config,
        salt: [u8; 16],
    ) -> Result<(Initiator, Request), Error> {
        config.params.validate(config.limits.message_bytes_max)?;
        if config.limits.queries_max == 0 {
            return Err(Error::InvalidParams("queries_max is 0"));
        }
        let mut session = Initiator {
            config,
            base_salt: salt,
            attempt: 0,
            salt,
            keys: SessionKeys::new(&salt, &config.params),
            local_root: tree.root(),
            remote_root: None,
            pending: VecDeque::new(),
            in_flight: Vec::new(),
            only_local: Vec::new(),
            only_remote: Vec::new(),
            round_trips: 0,
            round_trips_total: 0,
        };
        session.begin_attempt(tree);
        let request = session.next_request();
        Ok((session, request))
    }

    /// Decode a response with the session's limits, then [`handle`](Initiator::handle) it.
    ///
    /// # Errors
    ///
    /// Decoding errors and those of [`handle`](Initiator::handle).
    pub fn handle_bytes(&mut self, tree: &Tree, response: &[u8]) -> Result<Step, Error> {
        let response = Response::decode(response, &self.config.limits)?;
        self.handle(tree, response)
    }

    /// Consume the response to the last request. Costs `O(answers · log n)` plus hashing
    /// the local children of each differing prefix.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] or [`Error::LimitExceeded`] when the response breaks a rule
    /// (wrong answer count or kind, keys outside their prefix or out of order, views that
    /// contradict masks), [`Error::TooManyRounds`], [`Error::RootMismatch`] after the last
    /// attempt, [`Error::LocalChanged`], [`Error::NotWaiting`] after the end. After an
    /// error the session is unusable.
    pub fn handle(&mut self, tree: &Tree, response: Response) -> Result<Step, Error> {
        let result = self.handle_inner(tree, response);
        if result.is_err() {
            self.pending.clear();
            self.in_flight.clear();
        }
        result
    }

    fn handle_inner(&mut self, tree: &Tree, response: Response) -> Result<Step, Error> {
        if self.in_flight.is_empty() {
            return Err(Error::NotWaiting);
        }
        if tree.root() != self.local_root {
            return Err(Error::LocalChanged);
        }
        match (self.remote_root, response.root) {
            (None, Some(root)) => self.remote_root = Some(root),
            (None, None) => return Err(Error::Protocol("response lacks the requested root")),
            (Some(_), Some(_)) => return Err(Error::Protocol("response has an unrequested root")),
            (Some(_), None) => {}
        }
        if response.answers.len() > self.in_flight.len() {
            return Err(Error::Protocol("more answers than queries"));
        }
        if response.answers.is_empty() {
            return Err(Error::Protocol("response answers no query"));
        }
        if self.remote_root == Some(self.local_root) {
            // Equal full roots: equal sets, whatever the answers say.
            self.in_flight.clear();
            self.pending.clear();
            self.only_local.clear();
            self.only_remote.clear();
            return self.finish(tree);
        }
        let mut queries = std::mem::take(&mut self.in_flight);
        let deferred = queries.split_off(response.answers.len());
        for (query, answer) in queries.into_iter().zip(response.answers) {
            self.process(tree, query, answer)?;
        }
        for query in deferred.into_iter().rev() {
            self.pending.push_front(query);
        }

        if self.pending.is_empty() {
            return self.finish(tree);
        }
        if self.round_trips >= self.config.round_trips_max {
            return Err(Error::TooManyRounds {
                max: self.config.round_trips_max,
            });
        }
        Ok(Step::Send(self.next_request()))
    }

    fn begin_attempt(&mut self, tree: &Tree) {
        self.attempt += 1;
        let mut material = [0u8; 20];
        material[..16].copy_from_slice(&self.base_salt);
        material[16..].copy_from_slice(&self.attempt.to_le_bytes());
        let derived = blake3::derive_key("weft sync-smt v1 attempt salt", &material);
        self.salt.copy_from_slice(&derived[..16]);
        self.keys = SessionKeys::new(&self.salt, &self.config.params);
        self.local_root = tree.root();
        self.remote_root = None;
        self.pending.clear();
        self.in_flight.clear();
        self.only_local.clear();
        self.only_remote.clear();
        self.round_trips = 0;
        let body = if tree.is_empty() {
            QueryBody::Digests(Vec::new())
        } else {
            QueryBody::Fingerprint(
                self.keys.fingerprint(&tree.root())[..self.keys.fingerprint_bytes].to_vec(),
            )
        };
        self.pending.push_back(Query {
            prefix: Prefix::ROOT,
            body,
        });
    }

    fn next_request(&mut self) -> Request {
        let budget = self.config.limits.message_bytes_max - HEADER_BYTES_MAX;
        let mut used = 0;
        while let Some(query) = self.pending.front() {
            if self.in_flight.len() == self.config.limits.queries_max {
                break;
            }
            let size = postcard::experimental::serialized_size(query).unwrap_or(usize::MAX);
            if !self.in_flight.is_empty() && used + size > budget {
                break;
            }
            used += size;
            self.in_flight.extend(self.pending.pop_front());
        }
        self.round_trips += 1;
        self.round_trips_total += 1;
        Request {
            salt: self.salt,
            params: self.config.params,
            want_root: self.remote_root.is_none(),
            queries: self.in_flight.clone(),
        }
    }

    fn finish(&mut self, tree: &Tree) -> Result<Step, Error> {
        self.only_local.sort_unstable();
        self.only_local.dedup();
        self.only_remote.sort_unstable();
        self.only_remote.dedup();
        let root = tree.root_with(&self.only_remote, &self.only_local);
        if Some(root) == self.remote_root {
            return Ok(Step::Done(Diff {
                only_local: std::mem::take(&mut self.only_local),
                only_remote: std::mem::take(&mut self.only_remote),
                round_trips: self.round_trips_total,
                attempts: self.attempt,
            }));
        }
        if self.attempt >= self.config.attempts_max {
            return Err(Error::RootMismatch {
                attempts: self.attempt,
            });
        }
        self.begin_attempt(tree);
        Ok(Step::Send(self.next_request()))
    }

    fn process(&mut self, tree: &Tree, query: Query, answer: Answer) -> Result<(), Error> {
        let prefix = query.prefix;
        match (query.body, answer) {
            (QueryBody::Fingerprint(_), Answer::Same) => Ok(()),
            (QueryBody::Fingerprint(_), Answer::View(view)) => {
                self.on_view(tree, &prefix, view, false)
            }
            (
                QueryBody::Split { mask, .. },
                Answer::Children {
                    mask: remote_mask,
                    views_mask,
                    views,
                },
            ) => {
                if views_mask & !remote_mask != 0 {
                    return Err(Error::Protocol("view for a child the responder lacks"));
                }
                if remote_mask & !mask & !views_mask != 0 {
                    return Err(Error::Protocol(
                        "no view for a child only the responder holds",
                    ));
                }
                if views.len() != views_mask.count_ones() as usize {
                    return Err(Error::Protocol("view count does not match its mask"));
                }
                let mut views = views.into_iter();
                for i in 0..16 {
                    let child = prefix.extend(i, 4);
                    if views_mask >> i & 1 == 1 {
                        if let Some(view) = views.next() {
                            self.on_view(tree, &child, view, true)?;
                        }
                    } else if mask >> i & 1 == 1 && remote_mask >> i & 1 == 0 {
                        self.only_local.extend(tree.keys_under(&child));
                    }
                }
                Ok(())
            }
            (QueryBody::Digests(digests), Answer::Resolved { lacking, keys }) => {
                let mine = tree.keys_under(&prefix);
                let n = digests.len() / usize::from(self.config.params.digest_bytes);
                if mine.len() != n {
                    return Err(Error::LocalChanged);
                }
                if lacking.len() != n.div_ceil(8) {
                    return Err(Error::Protocol("lacking bitmap has the wrong length"));
                }
                if n % 8 != 0 && lacking.last().is_some_and(|b| b >> (n % 8) != 0) {
                    return Err(Error::Protocol("lacking bitmap has padding bits set"));
                }
                self.check_keys(&prefix, &keys, self.config.params.resolve_keys_max as usize)?;
                for (i, key) in mine.iter().enumerate() {
                    if lacking[i / 8] >> (i % 8) & 1 == 1 {
                        self.only_local.push(*key);
                    }
                }
                for key in keys {
                    if mine.binary_search(&key).is_ok() {
                        return Err(Error::Protocol("resolved key is one the initiator listed"));
                    }
                    self.only_remote.push(key);
                }
                Ok(())
            }
            (QueryBody::Digests(_), Answer::View(view)) => self.on_view(tree, &prefix, view, false),
            _ => Err(Error::Protocol("answer does not fit its query")),
        }
    }

    fn on_view(
        &mut self,
        tree: &Tree,
        prefix: &Prefix,
        view: View,
        non_empty: bool,
    ) -> Result<(), Error> {
        match view {
            View::Keys(keys) => {
                self.check_keys(prefix, &keys, self.config.params.keys_per_view_max())?;
                if non_empty && keys.is_empty() {
                    return Err(Error::Protocol("empty key list for a non-empty child"));
                }
                let mine = tree.keys_under(prefix);
                let (mut i, mut j) = (0, 0);
                while i < mine.len() || j < keys.len() {
                    if j == keys.len() || (i < mine.len() && mine[i] < keys[j]) {
                        self.only_local.push(mine[i]);
                        i += 1;
                    } else if i == mine.len() || keys[j] < mine[i] {
                        self.only_remote.push(keys[j]);
                        j += 1;
                    } else {
                        i += 1;
                        j += 1;
                    }
                }
                Ok(())
            }
            View::Split { mask, fingerprints } => {
                let fp = usize::from(self.config.params.fingerprint_bytes);
                check_split(prefix, mask, &fingerprints, fp)?;
                let children = tree.children(prefix);
                let mut theirs = fingerprints.chunks_exact(fp);
                for (i, (hash, count)) in children.iter().enumerate() {
                    let remote = if mask >> i & 1 == 1 {
                        theirs.next()
                    } else {
                        None
                    };
                    let child = prefix.extend(i, 4);
                    match remote {
                        None if *count > 0 => self.only_local.extend(tree.keys_under(&child)),
                        None => {}
                        Some(f) if *count > 0 && self.keys.fingerprint(hash)[..fp] == *f => {}
                        Some(_) => {
                            if self.pending.len() >= self.config.open_prefixes_max {
                                return Err(Error::LimitExceeded {
                                    what: "open prefix",
                                    count: self.pending.len() + 1,
                                    max: self.config.open_prefixes_max,
                                });
                            }
                            let query = self.local_view(tree, child, *count);
                            self.pending.push_back(query);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The query describing the local keys under a differing prefix.
    fn local_view(&self, tree: &Tree, prefix: Prefix, count: usize) -> Query {
        let body = if count <= usize::from(self.config.params.digests_max) {
            let mut digests =
                Vec::with_capacity(count * usize::from(self.config.params.digest_bytes));
            for key in tree.keys_under(&prefix) {
                digests.extend_from_slice(&self.keys.digest(&key)[..self.keys.digest_bytes]);
            }
            QueryBody::Digests(digests)
        } else {
            let (mask, fingerprints) = split_of(tree, &self.keys, &prefix);
            QueryBody::Split { mask, fingerprints }
        };
        Query { prefix, body }
    }

    fn check_keys(&self, prefix: &Prefix, keys: &[Key], max: usize) -> Result<(), Error> {
        if keys.len() > max {
            return Err(Error::LimitExceeded {
                what: "key",
                count: keys.len(),
                max,
            });
        }
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Protocol("keys are not strictly increasing"));
        }
        if !keys.iter().all(|k| prefix.contains(k)) {
            return Err(Error::Protocol("key outside its prefix"));
        }
        Ok(())
    }
}

/// The responder's side: answers each [`Request`] from its tree alone. It keeps no state
/// between requests, so any transport (one HTTP request per round, a stream) can carry
/// it, and several sessions can share one responder.
///
/// Work per request is bounded by the request: per query at most 16 child fingerprints,
/// or a digest match over at most `resolve_keys_max` keys; the reply stops (deferring the
/// remaining queries) before it would exceed [`Limits::message_bytes_max`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Responder {
    limits: Limits,
}

impl Responder {
    /// A responder enforcing `limits` on the requests it accepts and the replies it builds.
    #[must_use]
    pub fn new(limits: Limits) -> Responder {
        Responder { limits }
    }

    /// Decode a request, answer it, and encode the response.
    ///
    /// # Errors
    ///
    /// Those of [`Request::decode`].
    pub fn respond_bytes(&self, tree: &Tree, request: &[u8]) -> Result<Vec<u8>, Error> {
        let request = Request::decode(request, &self.limits)?;
        Ok(self.respond(tree, &request)?.encode())
    }

    /// Answer a request. Validates it first (it may not come from [`Request::decode`]).
    ///
    /// # Errors
    ///
    /// Those of [`Request::validate`].
    pub fn respond(&self, tree: &Tree, request: &Request) -> Result<Response, Error> {
        request.validate(&self.limits)?;
        let params = &request.params;
        let keys = SessionKeys::new(&request.salt, params);
        let budget = self.limits.message_bytes_max - HEADER_BYTES_MAX;
        let mut used = 0;
        let mut answers = Vec::new();
        for query in &request.queries {
            let answer = answer(tree, &keys, params, query);
            let size = postcard::experimental::serialized_size(&answer).unwrap_or(usize::MAX);
            if !answers.is_empty() && used + size > budget {
                break;
            }
            used += size;
            answers.push(answer);
        }
        Ok(Response {
            root: request.want_root.then(|| tree.root()),
            answers,
        })
    }
}

fn answer(tree: &Tree, keys: &SessionKeys, params: &Params, query: &Query) -> Answer {
    let prefix = &query.prefix;
    let fp = usize::from(params.fingerprint_bytes);
    match &query.body {
        QueryBody::Fingerprint(theirs) => {
            let count = tree.count_under(prefix);
            if count > 0 && keys.fingerprint(&tree.subtree_hash(prefix))[..fp] == theirs[..] {
                Answer::Same
            } else {
                Answer::View(view(tree, keys, params, prefix, count, true))
            }
        }
        QueryBody::Split { mask, fingerprints } => {
            let children = tree.children(prefix);
            let mut theirs = fingerprints.chunks_exact(fp);
            let (mut remote_mask, mut views_mask, mut views) = (0u16, 0u16, Vec::new());
            for (i, (hash, count)) in children.iter().enumerate() {
                let local = if mask >> i & 1 == 1 {
                    theirs.next()
                } else {
                    None
                };
                if *count == 0 {
                    continue;
                }
                remote_mask |= 1 << i;
                if local.is_some_and(|f| keys.fingerprint(hash)[..fp] == *f) {
                    continue;
                }
                views_mask |= 1 << i;
                let child = prefix.extend(i, 4);
                views.push(view(tree, keys, params, &child, *count, local.is_some()));
            }
            Answer::Children {
                mask: remote_mask,
                views_mask,
                views,
            }
        }
        QueryBody::Digests(digests) => {
            let count = tree.count_under(prefix);
            if count > params.resolve_keys_max as usize {
                let (mask, fingerprints) = split_of(tree, keys, prefix);
                return Answer::View(View::Split { mask, fingerprints });
            }
            let dg = usize::from(params.digest_bytes);
            let mut theirs: Vec<(&[u8], usize)> = digests.chunks_exact(dg).zip(0..).collect();
            theirs.sort_unstable();
            let n = theirs.len();
            let mut found = vec![false; n];
            let mut only_here = Vec::new();
            for key in tree.keys_under(prefix) {
                let full = keys.digest(&key);
                let d = &full[..dg];
                let start = theirs.partition_point(|(t, _)| *t < d);
                let mut hit = false;
                for (t, i) in &theirs[start..] {
                    if *t != d {
                        break;
                    }
                    found[*i] = true;
                    hit = true;
                }
                if !hit {
                    only_here.push(key);
                }
            }
            let mut lacking = vec![0u8; n.div_ceil(8)];
            for (i, f) in found.iter().enumerate() {
                if !f {
                    lacking[i / 8] |= 1 << (i % 8);
                }
            }
            Answer::Resolved {
                lacking,
                keys: only_here,
            }
        }
    }
}

/// The responder's view of a prefix it holds `count` keys under; `initiator_has` tells
/// whether the initiator holds any there.
fn view(
    tree: &Tree,
    keys: &SessionKeys,
    params: &Params,
    prefix: &Prefix,
    count: usize,
    initiator_has: bool,
) -> View {
    let send_keys = count <= usize::from(params.keys_inline_max)
        || (!initiator_has && count <= params.resolve_keys_max as usize)
        || count <= 1;
    if send_keys {
        View::Keys(tree.keys_under(prefix))
    } else {
        let (mask, fingerprints) = split_of(tree, keys, prefix);
        View::Split { mask, fingerprints }
    }
}

/// Mask and concatenated fingerprints of the non-empty children of `prefix`.
fn split_of(tree: &Tree, keys: &SessionKeys, prefix: &Prefix) -> (u16, Vec<u8>) {
    let fp = keys.fingerprint_bytes;
    let mut mask = 0u16;
    let mut fingerprints = Vec::with_capacity(16 * fp);
    for (i, (hash, count)) in tree.children(prefix).iter().enumerate() {
        if *count > 0 {
            mask |= 1 << i;
            fingerprints.extend_from_slice(&keys.fingerprint(hash)[..fp]);
        }
    }
    (mask, fingerprints)
}

/// Keys derived from one attempt's salt: fingerprints and digests of different things
/// never share a key.
#[derive(Debug)]
struct SessionKeys {
    fingerprint: [u8; 32],
    digest: [u8; 32],
    fingerprint_bytes: usize,
    digest_bytes: usize,
}

impl SessionKeys {
    fn new(salt: &[u8; 16], params: &Params) -> SessionKeys {
        SessionKeys {
            fingerprint: blake3::derive_key("weft sync-smt v1 fingerprint", salt),
            digest: blake3::derive_key("weft sync-smt v1 digest", salt),
            fingerprint_bytes: usize::from(params.fingerprint_bytes),
            digest_bytes: usize::from(params.digest_bytes),
        }
    }

    /// The salted fingerprint of a subtree hash (callers truncate to `fingerprint_bytes`).
    fn fingerprint(&self, hash: &Hash) -> [u8; 32] {
        *blake3::keyed_hash(&self.fingerprint, hash.as_bytes()).as_bytes()
    }

    /// The salted digest of a key (callers truncate to `digest_bytes`).
    fn digest(&self, key: &Key) -> [u8; 32] {
        *blake3::keyed_hash(&self.digest, key).as_bytes()
    }
}
