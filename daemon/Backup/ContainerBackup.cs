using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using DirBackup.Errors;
using DirBackup.Rpc;
using DirBackup.Store;

namespace DirBackup.Backup;

/// <summary>
/// backup_container: GNU tar runs inside the caller's user and mount namespaces (entered with nsenter on the
/// caller's pid), so it sees vzdump's <c>directory</c> and records container-relative owners exactly as PVE's
/// own backups do; the daemon receives the stream and stores it, then commits like a VM backup.
/// </summary>
public sealed class ContainerBackup(BackupSettings settings)
{
    public const string ArchiveFile = "archive.tar";
    public const string SquashfsFile = "archive.sqfs";

    public async Task RunAsync(GuestBackup session, RpcArgs args, CallContext context)
    {
        var cancellationToken = context.CancellationToken;
        var info = args.Element("info");
        var config = args.Bytes("guest-config");
        var directory = InfoPath(info, "directory");
        var sources = Sources(info);
        var excludes = Excludes(args.Element("exclude-patterns"));
        long userId = info.TryGetProperty("backup-user-id", out var u) && u.ValueKind == JsonValueKind.Number ? u.GetInt64() : 0;
        var firewall = info.TryGetProperty("firewall-config", out var fw) && fw.ValueKind == JsonValueKind.String ? Convert.FromBase64String(fw.GetString()!) : null;
        long limit = info.TryGetProperty("bandwidth-limit", out var bw) && VmBackup.PositiveInteger(bw) is long l ? l : 0;
        int caller = CheckCaller(session, args, context);
        CheckIdMap(caller, config, userId);
        bool squashfs = Format(args) == "squashfs";

        var staging = session.StagingDir;
        try
        {
            AtomicFile.WriteNew(Path.Combine(staging, "guest.conf"), config);
            if (firewall is not null)
            {
                AtomicFile.WriteNew(Path.Combine(staging, "firewall.conf"), firewall);
            }
            if (squashfs)
            {
                await SquashAsync(caller, SquashfsArguments(directory, sources, excludes, userId != 0), Path.Combine(staging, SquashfsFile), userId, limit, context).ConfigureAwait(false);
            }
            else
            {
                await ArchiveAsync(caller, TarArguments(directory, sources, excludes, userId != 0), Path.Combine(staging, ArchiveFile),
                    limit > 0 ? new BandwidthLimiter(limit) : null, context).ConfigureAwait(false);
            }
            cancellationToken.ThrowIfCancellationRequested();
            session.Commit(new Manifest
            {
                VmId = session.Volume.VmId,
                Type = "lxc",
                BackupTime = session.Volume.BackupTime,
                Archive = squashfs ? SquashfsFile : ArchiveFile,
                GuestConfig = "guest.conf",
                FirewallConfig = firewall is null ? null : "firewall.conf",
            });
        }
        catch
        {
            session.RemoveStaging();
            throw;
        }
    }

    /// <summary>Storage option dirbackup-ct-format: tar (default) or squashfs.</summary>
    private static string Format(RpcArgs args)
    {
        var scfg = args.Element("scfg");
        var format = scfg.TryGetProperty("dirbackup-ct-format", out var f) && f.ValueKind == JsonValueKind.String ? f.GetString()! : "tar";
        return format is "tar" or "squashfs" ? format : throw DirBackupException.InvalidParams($"dirbackup-ct-format '{format}' is neither tar nor squashfs");
    }

    /// <summary>
    /// mksquashfs over the container's directory. Its wildcards differ from tar's: a pattern relative to the source
    /// root is anchored, '... ' makes it match at any depth, and '*' stops at '/', so a trailing '/**' becomes '/*'
    /// (everything below the directory) and any other '**' a '*'.
    /// </summary>
    public static List<string> SquashfsArguments(string directory, IReadOnlyList<string> sources, IReadOnlyList<string> excludes, bool unprivileged)
    {
        var args = new List<string> { "mksquashfs", directory, "/proc/self/fd/3", "-noappend", "-no-progress", "-quiet" };
        if (sources.All(s => s.TrimEnd('/') is "." or ""))
        {
            args.Add("-one-file-system");
        }
        var patterns = new List<string>();
        if (unprivileged)
        {
            patterns.Add("... lost+found");
        }
        foreach (var pattern in excludes)
        {
            var glob = pattern.EndsWith("/**", StringComparison.Ordinal) ? pattern[..^3] + "/*" : pattern;
            glob = glob.Replace("**", "*", StringComparison.Ordinal);
            patterns.Add(glob.StartsWith('/') ? glob.TrimStart('/') : "... " + glob);
        }
        if (patterns.Count > 0)
        {
            args.Add("-wildcards");
            args.Add("-e");
            args.AddRange(patterns);
        }
        return args;
    }

    /// <summary>
    /// mksquashfs must write a seekable file it opens by name: it gets an inherited descriptor of the staging file
    /// (opened as root by a shell in the host namespaces) and reopens it through /proc/self/fd, which works for
    /// the mapped root because the file belongs to it until the image is done.
    /// </summary>
    private async Task SquashAsync(int caller, List<string> mksquashfs, string image, long userId, long bytesPerSecond, CallContext context)
    {
        await File.WriteAllBytesAsync(image, [], context.CancellationToken).ConfigureAwait(false);
        if (userId != 0)
        {
            await Qemu.ChildProcess.RunAsync("chown", [$"{userId}:{userId}", image], context.CancellationToken).ConfigureAwait(false);
        }
        var clock = Stopwatch.StartNew();
        using (var progress = new CancellationTokenSource())
        {
            var reporter = ReportGrowthAsync(image, clock, context, progress.Token);
            try
            {
                await RunInCallerAsync(caller, mksquashfs, image, "3<>", context,
                    bytesPerSecond > 0 ? process => PaceAsync(process, image, bytesPerSecond, clock) : null).ConfigureAwait(false);
            }
            finally
            {
                await progress.CancelAsync().ConfigureAwait(false);
                await reporter.ConfigureAwait(false);
            }
        }
        await Qemu.ChildProcess.RunAsync("chown", ["0:0", image], CancellationToken.None).ConfigureAwait(false);
        SyncFile(image);
    }

    /// <summary>The process whose namespaces tar enters: the caller, which must descend from the peer that prepared the backup.</summary>
    private static int CheckCaller(GuestBackup session, RpcArgs args, CallContext context)
    {
        int ancestor = session.PreparedBy ?? context.Peer.Pid;
        int caller = args.Has("pid") ? (int)args.Integer("pid") : context.Peer.Pid;
        if (!ProcessTree.DescendsFrom(caller, ancestor))
        {
            throw DirBackupException.InvalidParams($"backup_container: process {caller} is not a descendant of process {ancestor} that prepared the backup; refusing to enter its namespaces");
        }
        return caller;
    }

    /// <summary>
    /// The caller's user namespace must map ids the way the container's configuration says (lxc.idmap, or PVE's
    /// default 0:100000:65536), or the archive would record wrong owners.
    /// </summary>
    private static void CheckIdMap(int pid, byte[] config, long backupUserId)
    {
        var text = Encoding.UTF8.GetString(config);
        var lines = text.Split('\n').Select(l => l.Trim()).ToList();
        bool unprivileged = lines.Any(l => l.Replace(" ", "", StringComparison.Ordinal) == "unprivileged:1");
        foreach (var kind in new[] { 'u', 'g' })
        {
            var expected = lines
                .Where(l => l.StartsWith("lxc.idmap", StringComparison.Ordinal))
                .Select(l => l.Split([':', '=', ' '], StringSplitOptions.RemoveEmptyEntries))
                .Where(f => f.Length == 5 && f[1] == kind.ToString())
                .Select(f => (long.Parse(f[2], CultureInfo.InvariantCulture), long.Parse(f[3], CultureInfo.InvariantCulture), long.Parse(f[4], CultureInfo.InvariantCulture)))
                .ToList();
            if (expected.Count == 0)
            {
                expected = unprivileged || backupUserId != 0 ? [(0L, 100000L, 65536L)] : [(0L, 0L, 4294967295L)];
            }
            var actual = ProcessTree.IdMap(pid, kind);
            if (!actual.Order().SequenceEqual(expected.Order()))
            {
                throw DirBackupException.InvalidParams(
                    $"backup_container: the caller's {(kind == 'u' ? "uid" : "gid")} map ({Describe(actual)}) is not the container's ({Describe(expected)}); its archive would record wrong owners");
            }
        }
    }

    private static string Describe(List<(long Inside, long Outside, long Count)> map) =>
        string.Join(", ", map.Select(m => $"{m.Inside}:{m.Outside}:{m.Count}"));

    private static string InfoPath(JsonElement info, string key)
    {
        var path = info.ValueKind == JsonValueKind.Object && info.TryGetProperty(key, out var p) && p.ValueKind == JsonValueKind.String ? p.GetString()! : "";
        if (path.Length == 0 || path[0] != '/' || path.Any(char.IsControl) || path.Split('/').Contains(".."))
        {
            throw DirBackupException.InvalidParams($"backup_container: info.{key} '{path}' is not an absolute path");
        }
        return path;
    }

    /// <summary>vzdump's sources are paths relative to directory ('./', './mp'): none may climb out of it.</summary>
    public static List<string> Sources(JsonElement info)
    {
        if (!info.TryGetProperty("sources", out var sources) || sources.ValueKind != JsonValueKind.Array || sources.GetArrayLength() == 0)
        {
            throw DirBackupException.InvalidParams("backup_container: info.sources must list the paths to archive");
        }
        var list = new List<string>();
        foreach (var item in sources.EnumerateArray())
        {
            var source = item.ValueKind == JsonValueKind.String ? item.GetString()! : "";
            if (source.Length == 0 || source[0] == '/' || source.Any(char.IsControl) || source.Split('/').Contains("..") || source.StartsWith('-'))
            {
                throw DirBackupException.InvalidParams($"backup_container: source '{source}' is not a path inside the container's directory");
            }
            list.Add(source);
        }
        return list;
    }

    public static List<string> Excludes(JsonElement patterns)
    {
        var list = new List<string>();
        foreach (var item in patterns.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String || item.GetString()!.Length == 0 || item.GetString()!.Any(char.IsControl))
            {
                throw DirBackupException.InvalidParams("backup_container: exclude patterns must be non-empty strings without control characters");
            }
            list.Add(item.GetString()!);
        }
        return list;
    }

    /// <summary>
    /// vzdump's tar conventions: one file system per source, numeric owners, ACLs and the xattrs PVE keeps, sparse
    /// files. A pattern starting with '/' is anchored at the container root, any other matches anywhere; '*'
    /// crosses '/' in tar's exclusions, so '**' works as documented. Each is its own argument: no shell.
    /// </summary>
    public static List<string> TarArguments(string directory, IReadOnlyList<string> sources, IReadOnlyList<string> excludes, bool unprivileged)
    {
        var args = new List<string>
        {
            "tar", "cpf", "-", "--totals", "--one-file-system", "--sparse", "--numeric-owner", "--acls", "--xattrs",
            "--xattrs-include=user.*", "--xattrs-include=security.capability",
            "--warning=no-file-ignored", "--warning=no-xattr-write", $"--directory={directory}",
        };
        if (unprivileged)
        {
            args.AddRange(["--no-anchored", "--exclude=lost+found"]);
        }
        foreach (var pattern in excludes)
        {
            args.AddRange(pattern.StartsWith('/') ? ["--anchored", $"--exclude=.{pattern}"] : ["--no-anchored", $"--exclude={pattern}"]);
        }
        args.Add("--");
        args.AddRange(sources);
        return args;
    }

    private async Task ArchiveAsync(int caller, List<string> tar, string archive, BandwidthLimiter? limiter, CallContext context)
    {
        var cancellationToken = context.CancellationToken;
        var nsenter = InCaller(caller, tar);

        // Without a bandwidth limit tar writes the archive itself: a shell in the host namespaces opens the file
        // as root and hands it to tar as its standard output, so the data makes no extra trip through a pipe.
        // With a limit, the stream comes through the daemon, which paces it.
        var psi = limiter is null
            ? new ProcessStartInfo("sh") { RedirectStandardOutput = false, RedirectStandardError = true, UseShellExecute = false }
            : new ProcessStartInfo(nsenter[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (limiter is null)
        {
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add("set -C; exec \"$@\" > \"$0\"");
            psi.ArgumentList.Add(archive);
            foreach (var arg in nsenter)
            {
                psi.ArgumentList.Add(arg);
            }
        }
        else
        {
            foreach (var arg in nsenter.Skip(1))
            {
                psi.ArgumentList.Add(arg);
            }
        }
        using var process = Process.Start(psi) ?? throw DirBackupException.Io("cannot start nsenter");
        var errors = ReadErrorsAsync(process.StandardError);
        var clock = Stopwatch.StartNew();
        long bytes;
        try
        {
            if (limiter is null)
            {
                using var progress = new CancellationTokenSource();
                var reporter = ReportGrowthAsync(archive, clock, context, progress.Token);
                await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
                await progress.CancelAsync().ConfigureAwait(false);
                await reporter.ConfigureAwait(false);
                bytes = SyncFile(archive);
            }
            else
            {
                GrowPipe(process.StandardOutput.BaseStream);
                // A blocking copy on its own thread: tar's stream arrives in pipe-sized pieces, and awaiting each
                // one costs more than the copy itself.
                bytes = await Task.Factory.StartNew(() => Copy(process.StandardOutput.BaseStream, archive, limiter, clock, context),
                    cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
                await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
            throw;
        }
        var stderr = await errors.ConfigureAwait(false);
        foreach (var line in stderr.Where(l => !l.StartsWith("Total bytes written", StringComparison.Ordinal)).Take(20))
        {
            await context.WarnAsync(line).ConfigureAwait(false);
        }
        // GNU tar: 1 means some files changed while being read (the archive is complete), 2 is a fatal error.
        if (process.ExitCode >= 2)
        {
            // tar's last word is "Error is not recoverable"; the cause (a full disk, an unreadable file) comes first.
            var cause = stderr.FirstOrDefault(l => !l.Contains("Error is not recoverable", StringComparison.Ordinal) && !l.StartsWith("Total bytes", StringComparison.Ordinal));
            throw DirBackupException.Io($"tar failed (exit code {process.ExitCode}): {cause ?? stderr.LastOrDefault() ?? "no message"}");
        }
        double seconds = Math.Max(clock.Elapsed.TotalSeconds, 0.001);
        await context.InfoAsync($"archive of {Units.Bytes(bytes)} written in {(int)Math.Round(seconds)} seconds ({Units.Bytes(bytes / seconds)}/s)").ConfigureAwait(false);
    }

    /// <summary>
    /// mksquashfs writes its image itself, so the limit is kept by pausing it (SIGSTOP, SIGCONT) whenever the image
    /// has grown past what the limit allows so far.
    /// </summary>
    private static async Task PaceAsync(Process process, string image, long bytesPerSecond, Stopwatch clock)
    {
        bool stopped = false;
        try
        {
            while (!process.HasExited)
            {
                await Task.Delay(50).ConfigureAwait(false);
                long allowed = (long)(clock.Elapsed.TotalSeconds * bytesPerSecond);
                long written = new FileInfo(image).Length;
                if (written > allowed && !stopped)
                {
                    stopped = Native.Libc.kill(process.Id, SigStop) == 0;
                }
                else if (written <= allowed && stopped)
                {
                    Native.Libc.kill(process.Id, SigCont);
                    stopped = false;
                }
            }
        }
        finally
        {
            if (stopped && !process.HasExited)
            {
                Native.Libc.kill(process.Id, SigCont);
            }
        }
    }

    private const int SigStop = 19;
    private const int SigCont = 18;

    private static async Task RunInCallerAsync(int caller, List<string> command, string file, string redirect, CallContext context, Func<Process, Task>? watch = null)
    {
        var psi = new ProcessStartInfo("sh") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"exec \"$@\" {redirect}\"$0\"");
        psi.ArgumentList.Add(file);
        foreach (var arg in InCaller(caller, command))
        {
            psi.ArgumentList.Add(arg);
        }
        using var process = Process.Start(psi) ?? throw DirBackupException.Io("cannot start nsenter");
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var errors = ReadErrorsAsync(process.StandardError);
        var watcher = watch?.Invoke(process) ?? Task.CompletedTask;
        try
        {
            await process.WaitForExitAsync(context.CancellationToken).ConfigureAwait(false);
        }
        catch
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
        finally
        {
            await watcher.ConfigureAwait(false);
        }
        var stderr = await errors.ConfigureAwait(false);
        await stdout.ConfigureAwait(false);
        if (process.ExitCode != 0)
        {
            throw DirBackupException.Io($"{command[0]} failed (exit code {process.ExitCode}): {stderr.FirstOrDefault() ?? "no message"}");
        }
        foreach (var line in stderr.Take(20))
        {
            await context.WarnAsync(line).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// nsenter into the caller's mount namespace, and its user namespace when it has its own (an unprivileged
    /// container): there nsenter becomes uid 0, the container's root.
    /// </summary>
    private static List<string> InCaller(int caller, IEnumerable<string> command)
    {
        bool ownUserNamespace = File.ResolveLinkTarget($"/proc/{caller}/ns/user", false)?.Name != File.ResolveLinkTarget("/proc/self/ns/user", false)?.Name;
        var argv = new List<string> { "nsenter", $"--target={caller.ToString(CultureInfo.InvariantCulture)}" };
        if (ownUserNamespace)
        {
            argv.Add("--user");
        }
        argv.AddRange(["--mount", "--"]);
        argv.AddRange(command);
        return argv;
    }

    private async Task ReportGrowthAsync(string archive, Stopwatch clock, CallContext context, CancellationToken stop)
    {
        using var timer = new PeriodicTimer(settings.ProgressInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                long bytes = File.Exists(archive) ? new FileInfo(archive).Length : 0;
                await context.InfoAsync($"archived {Units.Bytes(bytes)} in {(int)clock.Elapsed.TotalSeconds}s ({Units.Bytes(bytes / clock.Elapsed.TotalSeconds)}/s)").ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static long SyncFile(string path)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        file.Flush(flushToDisk: true);
        return file.Length;
    }

    private long Copy(Stream input, string archive, BandwidthLimiter? limiter, Stopwatch clock, CallContext context)
    {
        var cancellationToken = context.CancellationToken;
        using var output = new FileStream(archive, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 0);
        var buffer = new byte[4 << 20];
        long bytes = 0;
        var lastReport = TimeSpan.Zero;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            // Fill most of the buffer before writing: fewer, larger writes to the storage.
            int filled = 0;
            int n;
            while (filled < buffer.Length - (1 << 20) && (n = input.Read(buffer, filled, buffer.Length - filled)) > 0)
            {
                filled += n;
            }
            if (filled == 0)
            {
                break;
            }
            limiter?.Take(filled, cancellationToken);
            output.Write(buffer, 0, filled);
            bytes += filled;
            if (clock.Elapsed - lastReport >= settings.ProgressInterval)
            {
                lastReport = clock.Elapsed;
                _ = context.InfoAsync($"archived {Units.Bytes(bytes)} in {(int)clock.Elapsed.TotalSeconds}s ({Units.Bytes(bytes / clock.Elapsed.TotalSeconds)}/s)");
            }
        }
        output.Flush(flushToDisk: true);
        return bytes;
    }

    /// <summary>A 1 MiB pipe instead of 64 KiB: tar and the daemon switch less often.</summary>
    private static void GrowPipe(Stream pipe)
    {
        nint fd = pipe switch
        {
            System.IO.Pipes.PipeStream p => p.SafePipeHandle.DangerousGetHandle(),
            FileStream f => f.SafeFileHandle.DangerousGetHandle(),
            _ => -1,
        };
        if (fd >= 0)
        {
            _ = Native.Libc.fcntl_int((int)fd, Native.Libc.F_SETPIPE_SZ, 1 << 20);
        }
    }

    private static async Task<List<string>> ReadErrorsAsync(StreamReader stderr)
    {
        var lines = new List<string>();
        string? line;
        while ((line = await stderr.ReadLineAsync().ConfigureAwait(false)) is not null)
        {
            if (lines.Count < 1000)
            {
                lines.Add(line);
            }
        }
        return lines;
    }
}
