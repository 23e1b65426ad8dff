using System.Diagnostics;
using System.Net.Sockets;
using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Qemu;

/// <summary>
/// A qemu-storage-daemon child serving one qcow2 image as a writable NBD export on a private Unix socket:
/// the copy engine writes backup images through it, so QEMU itself lays out every qcow2 cluster.
/// </summary>
public sealed class StorageDaemon : IAsyncDisposable
{
    public const string Tool = "qemu-storage-daemon";
    public const string ExportName = "target";

    private readonly Process _process;
    private readonly Task<string> _stderr;

    private StorageDaemon(Process process, string socketPath)
    {
        _process = process;
        SocketPath = socketPath;
        _stderr = process.StandardError.ReadToEndAsync();
        _ = process.StandardOutput.ReadToEndAsync();
    }

    public string SocketPath { get; }

    /// <summary>
    /// I/O modes where the writes land in reserved space (the preallocate filter) or only append (a full backup), best
    /// first: O_DIRECT with io_uring leaves no page cache to write out at the end; a kernel or filesystem without
    /// io_uring or O_DIRECT (tmpfs) gets the next one.
    /// </summary>
    private static readonly string[] DirectIoModes = ["cache.direct=on,aio=io_uring", "cache.direct=on,aio=native", "cache.direct=off,aio=threads"];

    /// <summary>
    /// An incremental's scattered 64 KiB clusters where no space can be reserved ahead: with O_DIRECT each one
    /// extending the file waits for the one before (232-265 ms against 107-112 ms through the page cache for 1310 of
    /// them, qemu-img bench).
    /// </summary>
    private static readonly string[] ScatteredIoModes = ["cache.direct=off,aio=io_uring", "cache.direct=off,aio=threads"];

    /// <summary>
    /// The image is staging until the backup commits, and whoever serves it syncs it after the stop (see
    /// <see cref="ServeQcow2Async"/>), so QEMU's own syncs buy nothing: qcow2 syncs the file each time it adds an L2
    /// table or a refcount block, holding its lock, and every allocating write waits meanwhile. Without them, and
    /// writing O_DIRECT into reserved space, an incremental of the benchmark disk (1310 clusters) copied in 97-122 ms
    /// instead of 120-164 ms through the page cache with them (12 interleaved rounds). Through the page cache without
    /// them, the final sync took back what the copy gained.
    /// </summary>
    private const string NoSyncs = "cache.no-flush=on";

    /// <summary>
    /// The NBD server allocates a buffer per request. With glibc's defaults a 1 MiB buffer is mapped and unmapped,
    /// or the heap trimmed, over and over: every request then faults in and zeroes fresh pages. Keeping them on the
    /// heap halves the page faults of a full backup (1.07 million against 0.59 million for the benchmark disk,
    /// counted with perf stat); the heap stays bounded by the requests in flight (a few 4 MiB units).
    /// </summary>
    private const string MallocTunables = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864";

    /// <summary>
    /// A full backup's target also asks for transparent huge pages for its heap (glibc 2.35 and later; an older glibc
    /// ignores the setting, and so does a kernel with them off). An O_DIRECT write then pins and hands the disk a 1 MiB
    /// buffer in one or two pages instead of 256: 1600 such writes through the NBD export, 16 in flight, took 0.79 s
    /// instead of 1.03 s, and the target's CPU time fell from 560 to 410 ms (medians of 16 interleaved runs, qemu-img
    /// bench). An incremental's 64 KiB writes gained nothing (1310 of them, 6 pairs), while its short-lived target would
    /// clear a whole huge page at each fault of its small heap.
    /// </summary>
    private const string HugePages = ":glibc.malloc.hugetlb=1";

    /// <summary>
    /// A full backup appends to its image, and on ext4 each O_DIRECT write past the end of the file waits for the one
    /// before to move the end. QEMU's preallocate filter reserves the space ahead in steps and gives back what is left
    /// when QEMU closes the image: 1.6 GiB in 1 MiB writes, 16 in flight, into a fresh qcow2 took 0.67-0.78 s with it
    /// and 1.16-1.31 s without (qemu-img bench, 4 runs each). QEMU 7.2 keeps a step the filesystem refused halfway
    /// (ENOSPC) in the file for good, which can fill a storage the backup itself would have fitted on; so the filter
    /// is used only where the whole disk and two steps fit in the free space.
    /// </summary>
    private const long GrowthStep = 128 << 20;

    /// <summary>The preallocate filter's step for this image, or null where the filter is not used.</summary>
    private static long? GrowthStepFor(string imagePath, long virtualSize)
    {
        if (Libc.statvfs(Path.GetDirectoryName(Path.GetFullPath(imagePath))!, out var vfs) != 0)
        {
            return null;
        }
        long metadataBound = virtualSize / 4096 + (4 << 20);
        if (vfs.AvailableBytes < virtualSize + metadataBound + 2 * GrowthStep)
        {
            return null;
        }
        const long MiB = 1 << 20;
        return Math.Min(GrowthStep, (virtualSize + MiB - 1) / MiB * MiB);
    }

    /// <summary>
    /// Serves a fresh qcow2 image for writing. QEMU writes everything out to the file when it stops, but never syncs
    /// it: the caller must fsync the image after <see cref="StopAsync"/> before relying on it.
    /// </summary>
    public static async Task<StorageDaemon> ServeQcow2Async(string imagePath, long virtualSize, string runtimeDir, bool scatteredWrites, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(runtimeDir);
        DirBackupException? last = null;
        var growthStep = GrowthStepFor(imagePath, virtualSize);
        foreach (var ioMode in scatteredWrites && growthStep is null ? ScatteredIoModes : DirectIoModes)
        {
            try
            {
                return await StartAsync(imagePath, runtimeDir, ioMode, growthStep, hugePages: !scatteredWrites, cancellationToken).ConfigureAwait(false);
            }
            catch (DirBackupException e) when (e.Code == ErrorCode.IoError)
            {
                last = e;
            }
        }
        throw last!;
    }

    private static async Task<StorageDaemon> StartAsync(string imagePath, string runtimeDir, string ioMode, long? growthStep, bool hugePages, CancellationToken cancellationToken)
    {
        var socket = Path.Combine(runtimeDir, $"qsd-{Guid.NewGuid():N}.sock");
        var psi = new ProcessStartInfo(Tool) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        psi.Environment["GLIBC_TUNABLES"] = hugePages ? MallocTunables + HugePages : MallocTunables;
        var args = new List<string> { "--blockdev", $"driver=file,node-name=file0,filename={Escape(imagePath)},{ioMode},{NoSyncs}" };
        var qcow2File = "file0";
        if (growthStep is long step)
        {
            args.AddRange(["--blockdev", $"driver=preallocate,node-name=grow0,file=file0,prealloc-size={step}"]);
            qcow2File = "grow0";
        }
        args.AddRange(
        [
            "--blockdev", $"driver=qcow2,node-name=disk0,file={qcow2File},discard=unmap",
            "--nbd-server", $"addr.type=unix,addr.path={Escape(socket)}",
            "--export", $"type=nbd,id=target,node-name=disk0,name={ExportName},writable=on",
            "--pidfile", socket + ".pid",
        ]);
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }
        Process process;
        try
        {
            process = Process.Start(psi)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new DirBackupException(ErrorCode.InternalError, $"cannot start {Tool}: {e.Message} (package qemu-system-common)");
        }
        var daemon = new StorageDaemon(process, socket);
        try
        {
            await daemon.WaitForSocketAsync(cancellationToken).ConfigureAwait(false);
            return daemon;
        }
        catch
        {
            await daemon.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>QEMU's option syntax doubles a comma to keep it inside a value.</summary>
    private static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);

    private async Task WaitForSocketAsync(CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            if (_process.HasExited)
            {
                var error = (await _stderr.ConfigureAwait(false)).Trim();
                throw DirBackupException.Io($"{Tool} exited: {DirBackupException.OneLine(error)}");
            }
            if (File.Exists(SocketPath))
            {
                try
                {
                    using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await probe.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), cancellationToken).ConfigureAwait(false);
                    return;
                }
                catch (SocketException)
                {
                }
            }
            if (DateTime.UtcNow > deadline)
            {
                throw DirBackupException.Io($"{Tool} did not open {SocketPath} within 30 s");
            }
            // qemu-storage-daemon listens about 10 ms after it starts; a coarser poll would add most of that again.
            await Task.Delay(2, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Stops QEMU with SIGTERM; it writes the image out to the file before it exits. A non-zero exit is an error.</summary>
    public async Task StopAsync()
    {
        if (!await TerminateAsync(_process, TimeSpan.FromSeconds(60)).ConfigureAwait(false))
        {
            _process.Kill();
            throw DirBackupException.Io($"{Tool} did not stop within 60 s");
        }
        TryDelete(SocketPath);
        TryDelete(SocketPath + ".pid");
        if (_process.ExitCode != 0)
        {
            throw DirBackupException.Io($"{Tool} failed: {DirBackupException.OneLine(await _stderr.ConfigureAwait(false))}");
        }
    }

    private const int SigTerm = 15;
    private static readonly TimeSpan TermRepeat = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// Sends SIGTERM until <paramref name="process"/> (a qemu-storage-daemon) exits, for at most <paramref name="limit"/>;
    /// false if it is still running then. Its handler only sets a flag that its main loop checks before it polls, so a
    /// signal that lands between the check and the poll leaves it asleep until something else wakes it, and once the
    /// copy's connections are closed nothing does. That happened to 1 stop in 600 with both cores busy (and failed a
    /// backup 60 s later); a signal sent again finds it polling and ends the poll.
    /// </summary>
    public static async Task<bool> TerminateAsync(Process process, TimeSpan limit)
    {
        long started = Stopwatch.GetTimestamp();
        while (!process.HasExited)
        {
            _ = Libc.kill(process.Id, SigTerm);
            var wait = TimeSpan.FromTicks(Math.Min(TermRepeat.Ticks, (limit - Stopwatch.GetElapsedTime(started)).Ticks));
            if (wait <= TimeSpan.Zero)
            {
                return false;
            }
            using var timeout = new CancellationTokenSource(wait);
            try
            {
                await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }
        return true;
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
            await _process.WaitForExitAsync().ConfigureAwait(false);
        }
        TryDelete(SocketPath);
        TryDelete(SocketPath + ".pid");
        _process.Dispose();
    }
}
