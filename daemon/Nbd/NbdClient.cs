using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Nbd;

/// <summary>
/// One libnbd connection to one export. Calls are synchronous and a handle serialises them, so the copy
/// engine opens one connection per worker to keep many requests in flight.
/// </summary>
public sealed unsafe class NbdClient : IDisposable
{
    private nint _handle;
    private readonly string _describe;

    private NbdClient(nint handle, string describe)
    {
        _handle = handle;
        _describe = describe;
    }

    public const string BaseAllocation = "base:allocation";
    public static string DirtyBitmapContext(string bitmapName) => "qemu:dirty-bitmap:" + bitmapName;

    public long Size { get; private set; }
    public bool CanTrim { get; private set; }
    public bool CanZero { get; private set; }
    public bool CanFlush { get; private set; }
    public bool ReadOnly { get; private set; }

    /// <summary>Connects to <paramref name="exportName"/> on a Unix socket, asking for the given meta contexts.</summary>
    public static NbdClient Connect(string socketPath, string exportName, params string[] metaContexts)
    {
        var describe = $"NBD export '{exportName}' on {socketPath}";
        nint h = LibNbd.nbd_create();
        if (h == 0)
        {
            throw DirBackupException.Io($"cannot create an NBD handle: {LibNbd.LastError()}");
        }
        var client = new NbdClient(h, describe);
        try
        {
            client.Check(LibNbd.nbd_set_handle_name(h, "dirbackupd"), "set handle name");
            // libnbd clears every read buffer first unless told the caller never looks at a failed read's buffer.
            client.Check(LibNbd.nbd_set_pread_initialize(h, false), "set pread initialize");
            client.Check(LibNbd.nbd_set_export_name(h, exportName), "set export name");
            foreach (var context in metaContexts)
            {
                client.Check(LibNbd.nbd_add_meta_context(h, context), "request meta context");
            }
            if (LibNbd.nbd_connect_unix(h, socketPath) == -1)
            {
                throw DirBackupException.Io($"cannot connect to {describe}: {LibNbd.LastError()}");
            }
            foreach (var context in metaContexts)
            {
                if (LibNbd.nbd_can_meta_context(h, context) != 1)
                {
                    throw DirBackupException.Io($"{describe} does not offer '{context}'");
                }
            }
            long size = LibNbd.nbd_get_size(h);
            client.Check(size < 0 ? -1 : 0, "get size");
            client.Size = size;
            client.CanTrim = LibNbd.nbd_can_trim(h) == 1;
            client.CanZero = LibNbd.nbd_can_zero(h) == 1;
            client.CanFlush = LibNbd.nbd_can_flush(h) == 1;
            client.ReadOnly = LibNbd.nbd_is_read_only(h) == 1;
            return client;
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    public void Read(Span<byte> buffer, long offset)
    {
        fixed (byte* p = buffer)
        {
            Check(LibNbd.nbd_pread(Handle, p, (nuint)buffer.Length, (ulong)offset, 0), $"read {buffer.Length} bytes at {offset}");
        }
    }

    public void Write(ReadOnlySpan<byte> buffer, long offset)
    {
        fixed (byte* p = buffer)
        {
            Check(LibNbd.nbd_pwrite(Handle, p, (nuint)buffer.Length, (ulong)offset, 0), $"write {buffer.Length} bytes at {offset}");
        }
    }

    /// <summary>Makes the range read as zeroes; the server may punch holes or set zero flags (no data written).</summary>
    public void Zero(long length, long offset) =>
        Check(LibNbd.nbd_zero(Handle, (ulong)length, (ulong)offset, 0), $"zero {length} bytes at {offset}");

    /// <summary>
    /// Several reads, writes, zeroes or trims at once on this connection: all are sent before waiting, so one thread keeps
    /// many requests in flight. Buffers must be pinned (they are read or written by libnbd until completion).
    /// </summary>
    /// <param name="readCompleted">
    /// Called with a read's index as soon as its data is in, on this thread and while that data is still in the CPU's
    /// cache, so work on it costs no second trip to memory.
    /// </param>
    public void Batch(ReadOnlySpan<NbdRequest> requests, Action<int>? readCompleted = null)
    {
        var h = Handle;
        Span<long> cookies = requests.Length <= 64 ? stackalloc long[requests.Length] : new long[requests.Length];
        t_readCompleted = readCompleted;
        t_readCompletedError = null;
        try
        {
            for (int i = 0; i < requests.Length; i++)
            {
                var completion = readCompleted is not null && requests[i].Kind == NbdRequestKind.Read
                    ? new LibNbd.CompletionCallback { Callback = &OnReadCompleted, UserData = (void*)i }
                    : default;
                cookies[i] = Submit(h, requests[i], completion);
                if (cookies[i] == -1)
                {
                    // Requests already sent still complete into our buffers: wait for them before reporting.
                    var r = requests[i];
                    var error = LibNbd.LastError();
                    Drain(h, cookies[..i]);
                    throw DirBackupException.Io($"{_describe}: {r.Kind.ToString().ToLowerInvariant()} of {r.Length} bytes at {r.Offset} failed: {error}");
                }
            }
            if (Drain(h, cookies) is { } failure)
            {
                throw DirBackupException.Io($"{_describe}: {failure}");
            }
        }
        finally
        {
            t_readCompleted = null;
        }
        if (t_readCompletedError is { } callbackError)
        {
            throw callbackError;
        }
    }

    [ThreadStatic] private static Action<int>? t_readCompleted;
    [ThreadStatic] private static Exception? t_readCompletedError;

    /// <summary>libnbd calls this from within our own calls on the handle, so on the thread of the batch.</summary>
    [UnmanagedCallersOnly]
    private static int OnReadCompleted(void* userData, int* error)
    {
        if (*error == 0 && t_readCompleted is { } readCompleted)
        {
            try
            {
                readCompleted((int)(nint)userData);
            }
            catch (Exception e)
            {
                t_readCompletedError ??= e;
            }
        }
        return 0;
    }

    private static long Submit(nint h, in NbdRequest r, LibNbd.CompletionCallback completion) => r.Kind switch
    {
        NbdRequestKind.Read => LibNbd.nbd_aio_pread(h, r.Buffer, (nuint)r.Length, (ulong)r.Offset, completion, 0),
        NbdRequestKind.Write => LibNbd.nbd_aio_pwrite(h, r.Buffer, (nuint)r.Length, (ulong)r.Offset, completion, 0),
        NbdRequestKind.Zero => LibNbd.nbd_aio_zero(h, (ulong)r.Length, (ulong)r.Offset, completion, 0),
        _ => LibNbd.nbd_aio_trim(h, (ulong)r.Length, (ulong)r.Offset, completion, 0),
    };

    /// <summary>Waits for every cookie; returns the first error.</summary>
    private static string? Drain(nint h, Span<long> cookies)
    {
        string? failure = null;
        int pending = cookies.Length;
        while (pending > 0)
        {
            pending = 0;
            for (int i = 0; i < cookies.Length; i++)
            {
                if (cookies[i] == 0)
                {
                    continue;
                }
                int done = LibNbd.nbd_aio_command_completed(h, (ulong)cookies[i]);
                if (done == 0)
                {
                    pending++;
                    continue;
                }
                if (done == -1)
                {
                    failure ??= LibNbd.LastError();
                }
                cookies[i] = 0;
            }
            if (pending > 0 && LibNbd.nbd_poll(h, -1) == -1)
            {
                return failure ?? LibNbd.LastError();
            }
        }
        return failure;
    }

    /// <summary>
    /// Lets this connection queue <paramref name="bytes"/> of requests in the kernel. On a Unix socket the sender's
    /// send buffer alone bounds what is in flight, and its default (208 KiB) splits every 1 MiB write into several
    /// sleeps and wake-ups on both ends. Above net.core.wmem_max only root may ask (SO_SNDBUFFORCE); otherwise the
    /// kernel's limit applies, which only costs speed.
    /// </summary>
    public void EnlargeSendQueue(int bytes)
    {
        int fd = LibNbd.nbd_aio_get_fd(Handle);
        if (fd < 0)
        {
            return;
        }
        if (Libc.setsockopt(fd, Libc.SOL_SOCKET, Libc.SO_SNDBUFFORCE, &bytes, sizeof(int)) != 0)
        {
            Libc.setsockopt(fd, Libc.SOL_SOCKET, Libc.SO_SNDBUF, &bytes, sizeof(int));
        }
    }

    /// <summary>What the kernel allows this connection to queue (twice the size asked for: it counts its bookkeeping too).</summary>
    public int SendQueueSize
    {
        get
        {
            int size = 0;
            uint length = sizeof(int);
            int fd = LibNbd.nbd_aio_get_fd(Handle);
            return fd >= 0 && Libc.getsockopt(fd, Libc.SOL_SOCKET, Libc.SO_SNDBUF, &size, &length) == 0 ? size : -1;
        }
    }

    public void Flush() => Check(LibNbd.nbd_flush(Handle, 0), "flush");

    /// <summary>
    /// The extents of one meta context over <c>[offset, offset+length)</c>, clipped to it. libnbd 1.14 has
    /// 32-bit extent lengths, so the range is asked for in pieces.
    /// </summary>
    public List<Extent> BlockStatus(string context, long offset, long length)
    {
        var collector = new ExtentCollector(context);
        var gc = GCHandle.Alloc(collector);
        try
        {
            long end = offset + length;
            long position = offset;
            while (position < end)
            {
                long ask = Math.Min(end - position, 1L << 30);
                collector.Reset(position, position + ask);
                var callback = new LibNbd.ExtentCallback
                {
                    Callback = &OnExtents,
                    UserData = (void*)GCHandle.ToIntPtr(gc),
                    Free = null,
                };
                Check(LibNbd.nbd_block_status(Handle, (ulong)ask, (ulong)position, callback, 0), $"block status of {ask} bytes at {position}");
                if (collector.ReachedTo <= position)
                {
                    throw DirBackupException.Io($"{_describe} answered block status at {position} with no extent");
                }
                position = collector.ReachedTo;
            }
            return collector.Extents;
        }
        finally
        {
            gc.Free();
        }
    }

    private sealed class ExtentCollector(string context)
    {
        private readonly byte[] _context = System.Text.Encoding.UTF8.GetBytes(context);
        private long _limit;

        public List<Extent> Extents { get; } = [];
        public long ReachedTo { get; private set; }

        public void Reset(long from, long limit)
        {
            ReachedTo = from;
            _limit = limit;
        }

        public void Add(byte* context, ulong offset, uint* entries, nuint count)
        {
            if (!new ReadOnlySpan<byte>(context, (int)strlen(context)).SequenceEqual(_context))
            {
                return;
            }
            long position = (long)offset;
            for (nuint i = 0; i + 1 < count && position < _limit; i += 2)
            {
                long length = Math.Min(entries[i], _limit - position);
                uint flags = entries[i + 1];
                if (Extents.Count > 0 && Extents[^1].End == position && Extents[^1].Flags == flags)
                {
                    Extents[^1] = Extents[^1] with { Length = Extents[^1].Length + length };
                }
                else
                {
                    Extents.Add(new Extent(position, length, flags));
                }
                position += length;
            }
            ReachedTo = Math.Max(ReachedTo, position);
        }

        private static nuint strlen(byte* s)
        {
            nuint n = 0;
            while (s[n] != 0)
            {
                n++;
            }
            return n;
        }
    }

    [UnmanagedCallersOnly]
    private static int OnExtents(void* userData, byte* context, ulong offset, uint* entries, nuint count, int* error)
    {
        var collector = (ExtentCollector)GCHandle.FromIntPtr((nint)userData).Target!;
        collector.Add(context, offset, entries, count);
        return 0;
    }

    private nint Handle => _handle != 0 ? _handle : throw new ObjectDisposedException(_describe);

    private void Check(int result, string what)
    {
        if (result == -1)
        {
            throw DirBackupException.Io($"{_describe}: {what} failed: {LibNbd.LastError()}");
        }
    }

    public void Dispose()
    {
        nint h = Interlocked.Exchange(ref _handle, 0);
        if (h != 0)
        {
            LibNbd.nbd_shutdown(h, LibNbd.ShutdownAbandonPending);
            LibNbd.nbd_close(h);
        }
    }
}
