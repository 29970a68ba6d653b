# C-level layout of the compiled twin's job objects, shared with ``dispatch``
# so that the slot loop reads a job's fields without attribute lookups.

cdef class _Decoded:
    # A parsed payload and its error (None when it parsed); a Job's may still be
    # pending, see Job._raw.
    cdef object _value
    cdef object _error


cdef class Job(_Decoded):
    # The payload text as fetched, until the payload is first read (then None).
    cdef object _raw
    cdef public object id
    cdef public object queue_name
    cdef public object task_identifier
    cdef public object priority
    cdef object _run_at
    cdef public object attempts
    cdef public object max_attempts
    cdef public object last_error
    cdef object _created_at
    cdef object _updated_at
    cdef public object key
    cdef object _locked_at
    cdef public object locked_by
    cdef public object revision
    cdef public object flags
    # The Lease of the fetch transaction that still holds this job's row, if any.
    cdef public object lease
    # The row version's address (ctid text) when the fetch returned it.
    cdef public object ctid

    cdef tuple _astuple(self)
    # Parses a pending payload (idempotent); after it _value and _error are final.
    cdef int ensure_payload(self) except -1
