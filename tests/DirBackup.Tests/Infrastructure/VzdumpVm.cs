using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

namespace DirBackup.Tests.Infrastructure;

/// <summary>Runs tools/vzdump-vm: one VM backup through the real Perl shim under perl -T, in vzdump's order.</summary>
public static class VzdumpVm
{
    public static string RepoRoot
    {
        get
        {
            var dir = new DirectoryInfo(AppContext.BaseDirectory);
            while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "protocol", "catalog.json")))
            {
                dir = dir.Parent;
            }
            return dir?.FullName ?? throw new InvalidOperationException("repository root not found");
        }
    }

    public sealed record Result(int ExitCode, JsonObject Output, string Log);

    /// <summary>tools/vzdump-ct: one container backup in vzdump's order, the archive call from a user-namespace child.</summary>
    public static async Task<Result> ContainerAsync(string daemonSocket, StorageBuilder storage, int vmid, string tree, long startTime,
        IEnumerable<string> excludes, IEnumerable<string>? extra = null)
    {
        var config = Path.Combine(storage.Root + "-ct", $"{vmid}.conf");
        await File.WriteAllTextAsync(config, $"arch: amd64\nhostname: ct{vmid}\nrootfs: local:subvol-{vmid}-disk-0,size=8G\nunprivileged: 1\n");
        var args = new List<string> { "tools/vzdump-ct", "--storeid", storage.StoreId, "--path", storage.Root, "--vmid", vmid.ToString(CultureInfo.InvariantCulture),
            "--config", config, "--tree", tree, "--start-time", startTime.ToString(CultureInfo.InvariantCulture) };
        foreach (var pattern in excludes)
        {
            args.AddRange(["--exclude", pattern]);
        }
        args.AddRange(extra ?? []);
        return await RunPerlAsync(daemonSocket, args);
    }

    /// <summary>tools/qmrestore-vm: one restore in qemu-server's order, raw images written into <paramref name="targetDir"/>.</summary>
    public static Task<Result> RestoreAsync(string daemonSocket, StorageBuilder storage, string volname, string targetDir)
    {
        Directory.CreateDirectory(targetDir);
        return RunPerlAsync(daemonSocket, ["tools/qmrestore-vm", "--storeid", storage.StoreId, "--path", storage.Root, "--volname", volname, "--target-dir", targetDir]);
    }

    /// <summary>
    /// A backup of <paramref name="disk"/> that must succeed, through a fresh backup access; QEMU's bitmap then starts
    /// again, as after vzdump's successful teardown.
    /// </summary>
    public static async Task BackUpAsync(string daemonSocket, StorageBuilder storage, int vmid, string device, SourceDisk disk, long startTime)
    {
        await using (var access = await disk.OpenBackupAccessAsync(device))
        {
            var run = await RunAsync(daemonSocket, storage, vmid, device, disk.Size, access.SocketPath, disk.Bitmap, startTime);
            Xunit.Assert.True(run.ExitCode == 0, $"{run.Output.ToJsonString()}\n{run.Log}");
        }
        await disk.CommitBitmapAsync();
    }

    public static Task<Result> RunAsync(string daemonSocket, StorageBuilder storage, int vmid, string device, long size, string nbdPath,
        string? bitmap, long startTime, string? notes = null, long? bwlimit = null, string? logFile = null, int? keepLast = null) =>
        RunAsync(daemonSocket, storage, vmid, [(device, size)], nbdPath, bitmap, startTime, notes, bwlimit, logFile, keepLast);

    /// <summary>Several disks of one VM, all exported by one NBD server as QEMU does.</summary>
    public static async Task<Result> RunAsync(string daemonSocket, StorageBuilder storage, int vmid, IReadOnlyList<(string Device, long Size)> devices,
        string nbdPath, string? bitmap, long startTime, string? notes = null, long? bwlimit = null, string? logFile = null, int? keepLast = null)
    {
        var config = Path.Combine(storage.Root, "..", $"vm-{vmid}-{startTime}.conf");
        var drives = devices.Select((d, i) => (Drive: d.Device["drive-".Length..], d.Device, d.Size, Index: i)).ToList();
        await File.WriteAllTextAsync(config, "memory: 512\n"
            + string.Concat(drives.Select(d => $"{d.Drive}: local:vm-{vmid}-disk-{d.Index},size={d.Size}\n"))
            + string.Concat(drives.Select(d => $"#qmdump#map:{d.Drive}:{d.Device}:local:qcow2:\n")));
        var args = new List<string>
        {
            "-T", "-I", "perl-shim", "-I", "tests/perl/lib", "tools/vzdump-vm",
            "--storeid", storage.StoreId, "--path", storage.Root, "--vmid", vmid.ToString(CultureInfo.InvariantCulture),
            "--config", Path.GetFullPath(config), "--nbd-path", nbdPath,
            "--start-time", startTime.ToString(CultureInfo.InvariantCulture),
        };
        foreach (var (device, size) in devices)
        {
            args.AddRange(["--device", $"{device}={size}"]);
        }
        if (bitmap is not null)
        {
            args.AddRange(["--bitmap", bitmap]);
        }
        if (notes is not null)
        {
            args.AddRange(["--notes", notes]);
        }
        if (bwlimit is not null)
        {
            args.AddRange(["--bwlimit", bwlimit.Value.ToString(CultureInfo.InvariantCulture)]);
        }
        if (logFile is not null)
        {
            args.AddRange(["--log", logFile]);
        }
        if (keepLast is not null)
        {
            args.AddRange(["--keep-last", keepLast.Value.ToString(CultureInfo.InvariantCulture)]);
        }
        return await RunPerlAsync(daemonSocket, args.Skip(5).ToList());
    }

    /// <summary>tools/vzdump-ct started, not awaited: a test can kill it mid-archive, as a stopped vzdump task is.</summary>
    public static Process StartContainer(string daemonSocket, StorageBuilder storage, int vmid, string tree, long startTime, IEnumerable<string> extra)
    {
        var config = Path.Combine(storage.Root + "-ct", $"{vmid}.conf");
        File.WriteAllText(config, $"arch: amd64\nhostname: ct{vmid}\nunprivileged: 1\n");
        var psi = new ProcessStartInfo("perl") { WorkingDirectory = RepoRoot, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "-T", "-I", "perl-shim", "-I", "tests/perl/lib", "tools/vzdump-ct", "--storeid", storage.StoreId, "--path", storage.Root,
            "--vmid", vmid.ToString(CultureInfo.InvariantCulture), "--config", config, "--tree", tree, "--start-time", startTime.ToString(CultureInfo.InvariantCulture) }.Concat(extra))
        {
            psi.ArgumentList.Add(arg);
        }
        psi.Environment["DIRBACKUP_SOCKET"] = daemonSocket;
        return Process.Start(psi)!;
    }

    private static async Task<Result> RunPerlAsync(string daemonSocket, List<string> script)
    {
        var psi = new ProcessStartInfo("perl") { WorkingDirectory = RepoRoot, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "-T", "-I", "perl-shim", "-I", "tests/perl/lib" }.Concat(script))
        {
            psi.ArgumentList.Add(arg);
        }
        psi.Environment["DIRBACKUP_SOCKET"] = daemonSocket;
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        var text = await stdout;
        JsonObject output;
        try
        {
            output = JsonNode.Parse(text)!.AsObject();
        }
        catch (System.Text.Json.JsonException)
        {
            throw new InvalidOperationException($"{script[0]} printed no result ({process.ExitCode}): {text}\n{await stderr}");
        }
        return new Result(process.ExitCode, output, await stderr);
    }
}
